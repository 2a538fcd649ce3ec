"""Receptive field (size, stride, offset) of any layer, propagated analytically over the architecture graph.

For output unit ``(i, j)`` of a layer, the input pixels that can influence it are the rows
``offset_h + i*stride_h ... offset_h + i*stride_h + size_h - 1`` (likewise for columns). Offsets are negative
where the field reaches into padding. Where branches meet (a residual addition), the field is the union of
theirs. Normalization layers are treated as pointwise (their batch statistics are fixed in eval mode).
A layer behind a global operation (global pooling, flatten + linear, attention over tokens) sees the whole input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.errors import ReceptiveFieldError
from deepscope.probe.graph import Graph, Node, graph
from deepscope.probe.layers import LayerAddress, get_layer, split_address
from deepscope.zoo.vision_model import VisionModel, as_vision_model

# Ops (module class names and function names) that act on each spatial position alone.
POINTWISE = {
    # modules
    "BatchNorm2d",
    "GroupNorm",
    "InstanceNorm2d",
    "LayerNorm",
    "LocalResponseNorm",
    "Identity",
    "Dropout",
    "Dropout2d",
    "ReLU",
    "ReLU6",
    "LeakyReLU",
    "PReLU",
    "ELU",
    "SELU",
    "CELU",
    "GELU",
    "SiLU",
    "Mish",
    "Hardswish",
    "Hardsigmoid",
    "Hardtanh",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Softsign",
    "Tanhshrink",
    "Threshold",
    "LogSigmoid",
    # functions and tensor methods
    "add",
    "sub",
    "mul",
    "truediv",
    "div",
    "neg",
    "relu",
    "relu6",
    "leaky_relu",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "elu",
    "selu",
    "softplus",
    "mish",
    "exp",
    "log",
    "clamp",
    "clip",
    "abs",
    "sqrt",
    "pow",
    "dropout",
    "batch_norm",
    "layer_norm",
    "group_norm",
    "instance_norm",
    "cat",
    "contiguous",
    "clone",
    "to",
    "float",
    "half",
    "type_as",
    "detach",
    "expand_as",
    "maximum",
    "minimum",
    "where",
    "sign",
    "square",
    "reciprocal",
    "rsqrt",
}


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of a layer in input pixels: per axis (height, width).

    ``is_global`` means every output unit depends on the whole input (``size`` is then the input size).
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    input_size: tuple[int, int]
    is_global: bool = False

    def box(self, i: int, j: int, clip: bool = True) -> tuple[int, int, int, int]:
        """Input pixels seen by output unit (i, j) as ``(top, left, bottom, right)``, bottom/right exclusive,
        clipped to the input unless ``clip=False``."""
        if self.is_global:
            return (0, 0, *self.input_size)
        top = self.offset[0] + i * self.stride[0]
        left = self.offset[1] + j * self.stride[1]
        bottom, right = top + self.size[0], left + self.size[1]
        if not clip:
            return (top, left, bottom, right)
        height, width = self.input_size
        return (max(top, 0), max(left, 0), min(bottom, height), min(right, width))


@dataclass(frozen=True)
class _Interval:
    """Input span [lo, hi] (inclusive, per axis) seen by output unit 0, and the step between units."""

    lo: tuple[float, float]
    hi: tuple[float, float]
    jump: tuple[float, float]


_GLOBAL = "global"


def receptive_field(
    model: VisionModel | nn.Module, layer: str, example: torch.Tensor | None = None
) -> ReceptiveField:
    """Receptive field of what layer name ``layer`` addresses (a module's output, ``'PATH@N'``, ``'PATH:input'``)
    for inputs shaped like ``example``.

    >>> import deepscope as ds
    >>> rf = ds.receptive_field(ds.load_model("zoo:lenet_mnist"), "conv2")
    >>> rf.size, rf.stride, rf.offset
    ((14, 14), (2, 2), (-2, -2))
    """
    return receptive_fields(model, [layer], example)[layer]


def receptive_fields(
    model: VisionModel | nn.Module, layers: list[str], example: torch.Tensor | None = None
) -> dict[str, ReceptiveField]:
    """:func:`receptive_field` of several layers from one trace of the model."""
    vm = as_vision_model(model)
    for layer in layers:
        get_layer(vm, layer)  # a clear error for a wrong name before any tracing
    dataflow = graph(vm, example)
    fields = _propagate(dataflow)
    input_shape = dataflow.node("input").output_shape
    input_size = (int(input_shape[-2]), int(input_shape[-1]))
    return {layer: _field_of(dataflow, fields, layer, input_size) for layer in layers}


def _field_of(dataflow: Graph, fields: dict, layer: str, input_size: tuple[int, int]) -> ReceptiveField:
    outputs = _layer_outputs(dataflow, layer)
    if not outputs:
        raise ReceptiveFieldError(f"layer {layer!r} does not take part in the forward pass from the input")
    found = {fields[node.id] for node in outputs}
    if len(found) > 1:
        raise ReceptiveFieldError(
            f"layer {layer!r} runs {len(outputs)} times with different receptive fields (a reused module); "
            f"name one call as '{layer}@N'"
        )
    field = found.pop()
    if field is None:
        raise ReceptiveFieldError(f"layer {layer!r} does not depend on the input")
    if field == _GLOBAL:
        return ReceptiveField(input_size, (0, 0), (0, 0), input_size, is_global=True)
    size = tuple(round(field.hi[a] - field.lo[a] + 1) for a in range(2))
    offset = tuple(math.floor(field.lo[a]) for a in range(2))
    stride = tuple(round(field.jump[a]) for a in range(2))
    return ReceptiveField(size, stride, offset, input_size)


def _layer_outputs(dataflow: Graph, layer: str) -> list[Node]:
    """The nodes whose outputs are what layer name ``layer`` addresses: a module's output (one node per call
    unless ``@N`` picks one), or for ``PATH:input`` the nodes that feed the module."""
    address = split_address(layer)
    call = LayerAddress(address.path, address.call)
    named = [node for node in dataflow.nodes if node.layer == str(call)]
    calls = named or [node for node in dataflow.nodes if node.module == address.path]
    if address.call is not None and not named:
        calls = calls[address.call : address.call + 1]
    if calls:
        if not address.input:
            return calls
        return [dataflow.node(source) for node in calls for source in dataflow.inputs_of(node.id)]
    # A module that is not a leaf: its output is the last node inside it that feeds something outside.
    inside = [n for n in dataflow.nodes if n.scope == address.path or n.scope.startswith(address.path + ".")]
    inside += [
        n for n in dataflow.nodes if n.module and n.module.startswith(address.path + ".") and n not in inside
    ]
    ids = {n.id for n in inside}
    if address.input:
        return [dataflow.node(src) for src, dst in dataflow.edges if dst in ids and src not in ids]
    leaving = [
        n for n in dataflow.nodes if n.id in ids and any(d not in ids for d in dataflow.outputs_of(n.id))
    ]
    return leaving[-1:]


def _propagate(dataflow: Graph) -> dict[str, _Interval | str | None]:
    fields: dict[str, _Interval | str | None] = {}
    for node in dataflow.nodes:
        if node.op == "input":
            fields[node.id] = _Interval((0.0, 0.0), (0.0, 0.0), (1.0, 1.0))
            continue
        incoming = [fields[src] for src in dataflow.inputs_of(node.id)]
        shapes = [dataflow.node(src).output_shape for src in dataflow.inputs_of(node.id)]
        fields[node.id] = _step(node, incoming, shapes)
    return fields


def _spatial(shape: tuple[int, ...] | None) -> bool:
    return shape is not None and len(shape) == 4


def _step(node: Node, incoming: list, shapes: list) -> _Interval | str | None:
    present = [(f, s) for f, s in zip(incoming, shapes, strict=True) if f is not None]
    if not present:
        return None
    if any(f == _GLOBAL for f, _ in present):
        return _GLOBAL
    spatial = [(f, s) for f, s in present if _spatial(s)]
    if not spatial or not _spatial(node.output_shape):
        # Flattening, pooling to a vector, token reshapes: the spatial layout is gone.
        return _GLOBAL if any(_spatial(s) for _, s in present) or not _spatial(node.output_shape) else None
    kind = node.attrs.get("kind")
    if kind == "window":
        ((field, _),) = spatial[:1]
        k, s, p, d = (node.attrs[key] for key in ("kernel_size", "stride", "padding", "dilation"))
        lo = tuple(field.lo[a] - p[a] * field.jump[a] for a in range(2))
        hi = tuple(field.hi[a] + (-p[a] + (k[a] - 1) * d[a]) * field.jump[a] for a in range(2))
        return _Interval(lo, hi, tuple(field.jump[a] * s[a] for a in range(2)))
    if kind == "pad":
        ((field, _),) = spatial[:1]
        left, _, top, _ = node.attrs["pad"]
        shift = (top * field.jump[0], left * field.jump[1])
        return _Interval(
            tuple(field.lo[a] - shift[a] for a in range(2)),
            tuple(field.hi[a] - shift[a] for a in range(2)),
            field.jump,
        )
    if kind == "adaptive":
        ((field, shape),) = spatial[:1]
        out_h, out_w = node.output_shape[-2:]
        in_h, in_w = shape[-2:]
        if (out_h, out_w) == (1, 1):
            return _GLOBAL
        if in_h % out_h or in_w % out_w:
            raise ReceptiveFieldError(
                f"adaptive pooling {in_h}x{in_w} -> {out_h}x{out_w} at {node.id} has uneven windows"
            )
        s = (in_h // out_h, in_w // out_w)
        return _step(
            Node(
                node.id,
                node.op,
                node.module,
                node.output_shape,
                0,
                node.scope,
                {"kind": "window", "kernel_size": s, "stride": s, "padding": (0, 0), "dilation": (1, 1)},
            ),
            incoming,
            shapes,
        )
    if kind == "unsupported" or node.op not in POINTWISE:
        raise ReceptiveFieldError(
            f"cannot compute a receptive field through {node.op!r} at node {node.id}: deepscope does not know "
            "how it moves spatial positions"
        )
    fields = [f for f, _ in spatial]
    if len({f.jump for f in fields}) > 1:
        raise ReceptiveFieldError(f"branches with different strides meet at {node.id} ({node.op})")
    return _Interval(
        tuple(min(f.lo[a] for f in fields) for a in range(2)),
        tuple(max(f.hi[a] for f in fields) for a in range(2)),
        fields[0].jump,
    )
