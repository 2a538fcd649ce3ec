"""Raw unit displays: a layer's activation maps for some images, and a convolution's filters."""

from __future__ import annotations

import torch
from torch import nn

from deepscope.errors import UnitError
from deepscope.probe.layers import get_layer
from deepscope.units._forward import layer_runner
from deepscope.zoo.vision_model import VisionModel, as_vision_model


def activations(model: VisionModel | nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """The output of ``layer`` for model inputs ``x``: ``[B,C,h,w]`` for a conv layer (``[B,units]`` for a
    linear one), raw, on the model's device. The model runs in eval mode, only as far as ``layer``.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.units.activations(vm, vm.preprocess(ds.datasets.mnist5k().images[:2]), "conv2").shape
    torch.Size([2, 16, 10, 10])
    """
    vm = as_vision_model(model)
    x = vm.check_inputs(x)
    with torch.no_grad(), layer_runner(vm, [layer]) as run:
        return run(x).activations[layer].clone()


def filters(model: VisionModel | nn.Module, layer: str) -> torch.Tensor:
    """The kernels of convolution ``layer``: ``[out, in/groups, kh, kw]``, a detached copy of the weight.

    Render them with ``deepscope.render.units.filter_grid`` (first layer: one RGB tile per filter; deeper
    layers: one tile per input channel; contrast normalized per filter).

    >>> import deepscope as ds
    >>> ds.units.filters(ds.load_model("zoo:lenet_mnist"), "conv2").shape
    torch.Size([16, 6, 5, 5])
    """
    module = get_layer(model, layer)
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        kind = type(module).__name__
        raise UnitError(
            f"layer {layer!r} ({kind}) has no 2-d convolution kernel [out, in, kh, kw]; pick a Conv2d layer"
        )
    if isinstance(module, nn.ConvTranspose2d):
        weight = weight.transpose(0, 1)
    return weight.detach().clone()
