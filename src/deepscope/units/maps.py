"""Raw unit displays: a layer's activation maps for some images, and the weights of a convolution or of a linear
layer that reads pixels, as images."""

from __future__ import annotations

import math

import torch
from torch import nn

from deepscope.errors import UnitError
from deepscope.probe.graph import graph
from deepscope.probe.layers import get_layer, split_address
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


def filters(model: VisionModel | nn.Module, layer: str, example: torch.Tensor | None = None) -> torch.Tensor:
    """The weights of ``layer`` as images, a detached copy: a convolution's kernels ``[out, in/groups, kh, kw]``;
    for a linear layer that reads the image's pixels (the first layer of a fully connected network, behind
    nothing but a flatten), each unit's weights reshaped to the image it reads, ``[out, C, H, W]``, as Erhan et
    al. 2009 show a first layer's units. The image's size is that of the model's input (or of ``example``, a
    model-input batch, for a model without a fixed size); a linear layer that reads anything else is refused
    with what it reads.

    Render them with ``deepscope.render.units.filter_grid`` (RGB or gray tiles, one per filter; deeper
    convolutions: one tile per input channel; contrast normalized per filter).

    >>> import deepscope as ds
    >>> ds.units.filters(ds.load_model("zoo:lenet_mnist"), "conv2").shape
    torch.Size([16, 6, 5, 5])
    >>> ds.units.filters(ds.load_model("zoo:mlp_mnist"), "fc1").shape  # 300 units, each a 28x28 image
    torch.Size([300, 1, 28, 28])
    """
    module = get_layer(model, layer)
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and isinstance(weight, torch.Tensor):
        image, reason = _image_read_by(as_vision_model(model), split_address(layer).path, module, example)
        if image is None:
            raise UnitError(reason)
        return weight.detach().reshape(module.out_features, *image).clone()
    if not isinstance(weight, torch.Tensor) or weight.ndim != 4:
        kind = type(module).__name__
        raise UnitError(
            f"layer {layer!r} ({kind}) has no 2-d convolution kernel [out, in, kh, kw] and is not a linear layer "
            "reading pixels; pick a Conv2d layer or a first Linear layer"
        )
    if isinstance(module, nn.ConvTranspose2d):
        weight = weight.transpose(0, 1)
    return weight.detach().clone()


def has_weight_images(
    model: VisionModel | nn.Module, layer: str, example: torch.Tensor | None = None
) -> bool:
    """Whether :func:`filters` shows ``layer``'s weights as images: a 2-d convolution, or a linear layer that
    reads the image's pixels.

    >>> import deepscope as ds
    >>> vm = ds.load_model("zoo:mlp_mnist")
    >>> has_weight_images(vm, "fc1"), has_weight_images(vm, "fc2")
    (True, False)
    """
    module = get_layer(model, layer)
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear) and isinstance(weight, torch.Tensor):
        vm = as_vision_model(model)
        return _image_read_by(vm, split_address(layer).path, module, example)[0] is not None
    return isinstance(weight, torch.Tensor) and weight.ndim == 4


# Ops that pass the image's values on in their [C,H,W] order, only reshaped (dropout is the identity in eval mode).
RESHAPING = {
    "Flatten",
    "flatten",
    "view",
    "reshape",
    "contiguous",
    "Identity",
    "Dropout",
    "clone",
    "to",
    "float",
}


def _image_read_by(
    vm: VisionModel, path: str, module: nn.Linear, example: torch.Tensor | None
) -> tuple[tuple[int, int, int] | None, str]:
    """``(C, H, W)`` of the input image whose flattened pixels linear layer ``path`` reads, from the model's graph
    (every call of the layer must reach the input through reshaping ops alone), or None and why not."""
    dataflow = graph(vm, example)
    calls = [node for node in dataflow.nodes if node.module == path]
    if not calls:
        return None, f"linear layer {path!r} does not run in the forward pass of {vm.name}"
    shape = dataflow.node("input").output_shape
    for call in calls:
        node = call
        while True:
            sources = dataflow.inputs_of(node.id)
            if len(sources) != 1:
                return None, f"linear layer {path!r} reads {len(sources)} tensors, not the image's pixels"
            node = dataflow.node(sources[0])
            if node.op == "input":
                break
            if node.op not in RESHAPING:
                return None, (
                    f"linear layer {path!r} reads the output of {node.id} ({node.op}), not the image's pixels; "
                    "its weights are not images (filters shows the first linear layer of a fully connected "
                    "network, behind nothing but a flatten)"
                )
    if shape is None or len(shape) != 4 or math.prod(shape[1:]) != module.in_features:
        return None, (
            f"linear layer {path!r} takes {module.in_features} features, not the {list(shape or [])[1:]} image's "
            "pixels flattened"
        )
    return (shape[1], shape[2], shape[3]), ""
