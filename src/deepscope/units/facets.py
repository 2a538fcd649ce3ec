"""Multifaceted feature visualization's starting images (Nguyen, Yosinski & Clune 2016): the unit's top images,
clustered, and the mean image of each cluster."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deepscope.errors import SettingError
from deepscope.units._forward import layer_runner
from deepscope.units.clustering import kmeans
from deepscope.units.patches import DataSource, top_patches
from deepscope.zoo.vision_model import VisionModel, as_vision_model


def multifaceted_init(
    model: VisionModel | nn.Module,
    data: Any,
    layer: str,
    unit: int,
    facets: int = 4,
    top: int = 60,
    cluster_layer: str | None = None,
    batch_size: int = 64,
    seed: int = 0,
) -> torch.Tensor:
    """Starting images ``[facets,C,H,W]`` (pixels in [0, 1]) for visualizing the facets of one unit.

    The ``top`` samples of ``data`` that most activate unit ``unit`` of ``layer`` (one streaming pass) are
    clustered by k-means (k-means++ seeding with ``seed``) on their activations at ``cluster_layer`` (default:
    ``layer``), and each cluster's mean image is returned, largest cluster first. Nguyen et al. 2016 cluster a
    class's top training images on fc7 and start the optimization of each facet from a cluster's mean image;
    pass the result as ``visualize(..., init=...)``.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.units.multifaceted_init(vm, ds.datasets.mnist5k("test"), "fc3", unit=7, facets=3, top=30).shape
    torch.Size([3, 1, 28, 28])
    """
    vm = as_vision_model(model)
    if facets < 1 or top < facets:
        raise SettingError(f"need 1 <= facets <= top, got facets={facets}, top={top}")
    hits = top_patches(vm, data, layer, units=[unit], k=top, batch_size=batch_size, crops=False)[layer]
    indices = hits.sample_indices[0].tolist()
    if len(indices) < facets:
        raise SettingError(f"only {len(indices)} samples for {facets} facets")
    source = DataSource(vm, data)
    cluster_layer = cluster_layer or layer
    features, pixels = [], []
    with torch.no_grad(), layer_runner(vm, [cluster_layer]) as run:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            features.append(run(source.inputs(chunk)).activations[cluster_layer].flatten(1).float())
            pixels.append(source.pixels(chunk).float())
    labels = kmeans(torch.cat(features), facets, seed)
    images = torch.cat(pixels)
    sizes = torch.bincount(labels, minlength=facets)
    order = sorted(range(facets), key=lambda c: (-int(sizes[c]), c))
    return torch.stack([images[labels == c].mean(0) for c in order])
