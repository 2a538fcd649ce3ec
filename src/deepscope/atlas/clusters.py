"""Neuron clusters in the architecture (CNNVis: Liu, Shi, Li, Li, Zhu & Liu, "Towards Better Analysis of Deep
Convolutional Neural Networks", IEEE VIS 2016 / TVCG 2017).

CNNVis draws each layer as a few clusters of neurons that behave alike, with the connections between the
clusters of consecutive layers bundled into one edge each, and shows each cluster by the images its neurons
respond to. Here, from a scanned workspace and the model's weights:

- **units -> clusters.** A unit's activation profile is its pooled activation on every scanned sample (one
  column of ``ws.embeddings(layer)``). Profiles are centered and scaled to unit length, so the squared Euclidean
  distance between two units is ``2 (1 - r)`` with ``r`` their Pearson correlation over the data: units that
  rise and fall together are close whatever their scales. Ward's agglomerative clustering (scipy's ``linkage``
  on those distances) is cut at ``k`` clusters. This is deterministic; CNNVis's own grouping differs in detail
  (it clusters on learned features and packs clusters by rectangle packing), so this is our variant. A unit
  that never changes over the data has no profile (its centered column is zero); such units fall into a
  cluster together.
- **edges.** The strength of the connection from cluster ``b`` of one layer to cluster ``a`` of the next is the
  sum of the absolute weights from every unit of ``b`` to every unit of ``a``
  (:func:`deepscope.probe.unit_connections`: summed over the kernel for a convolution).
- **representatives.** The samples that most of a cluster's units hold in their top-k lists (the scan's per-unit
  top-k by spatial maximum), ties broken by the summed activations relative to each unit's maximum.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from deepscope.atlas.scanning.fingerprints import model_fingerprint
from deepscope.atlas.workspace import Workspace
from deepscope.errors import SettingError, SettingTypeError, WorkspaceError
from deepscope.probe.connections import CONNECTING, unit_connections
from deepscope.probe.layers import split_address
from deepscope.zoo.loaders import load_model
from deepscope.zoo.vision_model import VisionModel


def cluster_units(activations: np.ndarray, k: int) -> np.ndarray:
    """Cluster the units (columns) of ``activations`` ``[samples, units]`` into ``k`` groups by their activation
    profiles (see the module docstring: unit-length centered profiles, Ward linkage). Clusters are numbered in
    the order of their first unit; fewer than ``k`` come back only where units have identical profiles.

    >>> profile = np.array([0.0, 1.0, 3.0, 0.5])
    >>> other = np.array([2.0, 0.0, 0.0, 1.0])
    >>> cluster_units(np.stack([profile, other, 5 * profile + 1, other / 2], axis=1), 2).tolist()
    [0, 1, 0, 1]
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    values = np.asarray(activations, dtype=np.float64)
    if values.ndim != 2:
        raise SettingError(f"activations must be [samples, units], got shape {values.shape}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise SettingTypeError(f"k must be a positive int, got {k!r}")
    units = values.shape[1]
    if not 1 <= k <= units:
        raise SettingError(f"k must be between 1 and the layer's {units} units, got {k}")
    if not np.isfinite(values).all():
        raise SettingError("the activations hold NaN or infinite values")
    if units == 1:
        return np.zeros(1, dtype=np.int64)
    centered = values - values.mean(0)
    norms = np.linalg.norm(centered, axis=0)
    profiles = centered / np.where(norms > 0, norms, 1.0)
    # Distances from the units' Gram matrix: U x U work after one pass over the samples, not U x U x samples.
    gram = profiles.T @ profiles
    squared = np.diag(gram)[:, None] + np.diag(gram)[None, :] - 2 * gram
    distances = np.sqrt(np.clip(squared, 0.0, None))
    np.fill_diagonal(distances, 0.0)
    tree = linkage(squareform(distances, checks=False), method="ward")
    labels = fcluster(tree, t=k, criterion="maxclust")
    # Fewer than k clusters come back only where units coincide (a tie in the tree cannot be cut).
    _, first_units, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first_units))[inverse].astype(np.int64)


@dataclass(frozen=True)
class LayerClusters:
    """The clusters of one layer: ``labels`` ``[units]`` (each unit's cluster), ``sizes`` ``[clusters]`` and
    ``representatives`` ``[clusters, samples]`` (dataset indices, best first; -1 where a cluster has fewer)."""

    layer: str
    labels: np.ndarray
    sizes: np.ndarray
    representatives: np.ndarray

    @property
    def clusters(self) -> int:
        return len(self.sizes)

    def members(self, cluster: int) -> np.ndarray:
        """The units of ``cluster``."""
        return np.flatnonzero(self.labels == cluster)


@dataclass(frozen=True)
class NeuronClusters:
    """A network drawn as clusters of units: ``layers`` in order, each a :class:`LayerClusters`;
    ``edges[i]`` ``[clusters of layer i+1, clusters of layer i]`` the summed absolute weights from each cluster of
    layer ``i`` to each cluster of layer ``i + 1``; ``connections[i]`` the same between single units
    ``[units of layer i+1, units of layer i]``."""

    layers: list[LayerClusters]
    edges: list[np.ndarray]
    connections: list[np.ndarray]

    def layer(self, name: str) -> LayerClusters:
        for entry in self.layers:
            if entry.layer == name:
                return entry
        raise SettingError(f"no layer {name!r} here; layers: {', '.join(e.layer for e in self.layers)}")


def neuron_clusters(
    ws: Workspace,
    model: VisionModel | nn.Module | str,
    layers: Sequence[str] | None = None,
    k: int | Mapping[str, int] = 4,
    samples: int = 6,
    example: torch.Tensor | None = None,
) -> NeuronClusters:
    """Cluster the units of each of ``layers`` by their activations over the scanned data, join the clusters of
    consecutive layers by the summed absolute weights between them, and give each cluster its ``samples``
    representative samples (see the module docstring). ``model`` must be the model ``ws`` scanned; ``layers``
    (default: every recorded layer that is a convolution or linear layer's output, in recorded order) must
    follow each other in the model; ``k`` clusters per layer (an int, or per layer name); ``example``: an input
    batch for the architecture graph, needed when the model has no known input size.

    >>> import tempfile, deepscope as ds
    >>> digits = ds.datasets.mnist5k("test").subset(range(300))
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", digits, out=tempfile.mkdtemp(), thumbnail_size=0)
    >>> result = ds.atlas.neuron_clusters(ws, "zoo:lenet_mnist", ["conv1", "conv2", "fc1"], k=3)
    >>> [entry.layer for entry in result.layers], [edge.shape for edge in result.edges]
    (['conv1', 'conv2', 'fc1'], [(3, 3), (3, 3)])
    """
    vm = load_model(model)
    if model_fingerprint(vm) != ws.model_fingerprint:
        raise WorkspaceError(
            f"the scan in {ws.path} (run {ws.run.id}) was made with {ws.run.model}, not with this model "
            "(its structure, weights, preprocessing or class names differ); give the model that was scanned"
        )
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise SettingTypeError(
            f"samples must be a positive int (representatives per cluster), got {samples!r}"
        )
    if samples < 1:
        raise SettingError(f"samples must be a positive int (representatives per cluster), got {samples!r}")
    names = _default_layers(vm, ws) if layers is None else list(layers)
    if len(names) < 2:
        raise SettingError(f"neuron clusters join consecutive layers: give at least 2, got {names}")
    per_layer = {name: k for name in names} if not isinstance(k, Mapping) else dict(k)
    missing = [name for name in names if name not in per_layer]
    if missing:
        raise SettingError(f"k names no cluster count for layers {missing}")
    clustered = [_layer_clusters(ws, name, per_layer[name], samples) for name in names]
    connections = [c.detach().double().cpu().numpy() for c in unit_connections(vm, names, example)]
    edges = []
    for connection, (source, target) in zip(connections, itertools.pairwise(clustered), strict=True):
        into = np.eye(target.clusters)[target.labels]  # [target units, target clusters]
        out_of = np.eye(source.clusters)[source.labels]  # [source units, source clusters]
        edges.append(into.T @ connection @ out_of)
    return NeuronClusters(clustered, edges, connections)


def _default_layers(vm: VisionModel, ws: Workspace) -> list[str]:
    chosen = []
    for name in ws.layers:
        address = split_address(name)
        if not address.input and isinstance(vm.module.get_submodule(address.path), CONNECTING):
            chosen.append(name)
    return chosen


def _layer_clusters(ws: Workspace, layer: str, k: int, samples: int) -> LayerClusters:
    labels = cluster_units(ws.embeddings(layer), k)
    clusters = int(labels.max()) + 1
    values, indices = ws.top_k(layer)
    peaks = ws.unit_statistics(layer)["max"].astype(np.float64)
    scale = np.where(peaks > 0, peaks, 1.0)[:, None]
    representatives = np.full((clusters, samples), -1, dtype=np.int64)
    for cluster in range(clusters):
        members = labels == cluster
        listed = indices[members].ravel()
        if listed.size == 0:
            continue
        relative = (values[members] / scale[members]).ravel()
        candidates, position = np.unique(listed, return_inverse=True)
        votes = np.bincount(position, minlength=candidates.size)
        strength = np.bincount(position, weights=relative, minlength=candidates.size)
        order = np.lexsort((candidates, -strength, -votes))[:samples]
        representatives[cluster, : order.size] = candidates[order]
    return LayerClusters(layer, labels, np.bincount(labels, minlength=clusters), representatives)
