"""How strongly the units of one layer feed the units of the next: the summed absolute weights between them.

For consecutive layers ``source`` and ``target``, where ``target`` is the output of a convolution or linear layer
whose input is ``source``'s output passed through operations that never mix units (activations, pooling,
normalization, dropout, flattening: matched by op name, see ``UNIT_WISE_OPS``), the strength of the connection from source unit ``j`` to target unit ``i``
is ``sum |W[i, j, ...]|``: over the kernel for a convolution, over the positions of channel ``j`` in the
flattened input for a linear layer after a flatten. This is the connection weight CNNVis (Liu et al., "Towards
Better Analysis of Deep Convolutional Neural Networks", IEEE VIS 2016 / TVCG 2017) bundles its edges by.
Normalization layers in between scale each unit on its own (a layer or group norm also divides by statistics
over several units, which no weight expresses); their scales are no part of the sum.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from torch import nn

from deepscope.errors import LayerNotFoundError, SettingError
from deepscope.probe.graph import Graph, Node, graph
from deepscope.probe.layers import split_address
from deepscope.zoo.vision_model import VisionModel, as_vision_model

CONNECTING = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
# Operations that keep units apart (each output unit depends on one input unit, or the op only reshapes in
# channel-major order): the only ones a connection may pass through. Matched against lower-cased op names.
UNIT_WISE_OPS = (
    "relu",
    "gelu",
    "silu",
    "swish",
    "sigmoid",
    "tanh",
    "elu",
    "mish",
    "softplus",
    "hardtanh",
    "pool",
    "norm",
    "dropout",
    "flatten",
    "view",
    "reshape",
    "identity",
    "contiguous",
    "clone",
)


def unit_connections(
    model: VisionModel | nn.Module, layers: Sequence[str], example: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """For each pair of consecutive ``layers`` (source, target), the summed absolute weights from every source
    unit to every target unit, ``[target units, source units]``, on the weights' device (see the module
    docstring). A target must be a convolution or linear layer's output (``'PATH'`` or ``'PATH@N'``); a source
    may be any layer name, ``'PATH:input'`` included. The architecture graph (:func:`deepscope.graph`, run on
    ``example``, default zeros of the model's input size) shows that each target takes its source's output
    through unit-wise operations only.

    >>> import deepscope as ds
    >>> lenet = ds.load_model("zoo:lenet_mnist")
    >>> conv1_to_conv2, conv2_to_fc1 = unit_connections(lenet, ["conv1", "conv2", "fc1"])
    >>> conv1_to_conv2.shape, conv2_to_fc1.shape  # fc1 reads conv2's 16 channels flattened to 16 x 5 x 5 inputs
    (torch.Size([16, 6]), torch.Size([120, 16]))
    """
    vm = as_vision_model(model)
    names = list(layers)
    if len(names) < 2:
        raise SettingError(f"connections join consecutive layers: give at least 2, got {names}")
    dataflow = graph(vm, example)
    found = []
    for source, target in itertools.pairwise(names):
        module, target_node = _target(vm, dataflow, target)
        source_node = _source_node(dataflow, source)
        _check_unit_wise_path(dataflow, source_node, target_node, source, target)
        found.append(_summed_weights(module, source_node, source, target))
    return found


def _layer_node(dataflow: Graph, name: str) -> Node:
    for node in dataflow.nodes:
        if node.layer == name:
            return node
    calls = [node.layer for node in dataflow.nodes if node.layer and node.layer.startswith(name + "@")]
    if calls:
        raise SettingError(
            f"layer {name!r} runs more than once per forward pass; name one call: {', '.join(calls)}"
        )
    raise LayerNotFoundError(f"no layer {name!r} in the model's graph")


def _target(vm: VisionModel, dataflow: Graph, name: str) -> tuple[nn.Module, Node]:
    address = split_address(name)
    if address.input:
        raise SettingError(
            f"{name!r} is a module's input: no weights lead into it; a connection ends at a convolution or "
            "linear layer's output"
        )
    module = vm.module.get_submodule(address.path) if address.path else vm.module
    if not isinstance(module, CONNECTING):
        raise SettingError(
            f"layer {name!r} is a {type(module).__name__}, not a convolution or linear layer: there is no weight "
            "matrix from the layer before it to its units"
        )
    return module, _layer_node(dataflow, name)


def _source_node(dataflow: Graph, name: str) -> Node:
    """The node whose output is the layer ``name``: for ``'PATH:input'``, the one node feeding PATH."""
    address = split_address(name)
    if not address.input:
        return _layer_node(dataflow, name)
    consumer = _layer_node(dataflow, name.removesuffix(":input"))
    feeding = dataflow.inputs_of(consumer.id)
    if len(feeding) != 1:
        raise SettingError(f"{name!r} is made of {len(feeding)} tensors, not one layer's output")
    return dataflow.node(feeding[0])


def _check_unit_wise_path(
    dataflow: Graph, source: Node, target: Node, source_name: str, target_name: str
) -> None:
    """Walk back from ``target`` to ``source`` through single-input, unit-wise operations, or refuse."""
    feeding = dataflow.inputs_of(target.id)
    while True:
        if len(feeding) != 1:
            raise SettingError(
                f"{target_name!r} does not take {source_name!r}'s output alone: a node on the way has "
                f"{len(feeding)} inputs"
            )
        node = dataflow.node(feeding[0])
        if node.id == source.id:
            return
        if node.op == "input" or not any(op in node.op.lower() for op in UNIT_WISE_OPS):
            between = "the model's input" if node.op == "input" else f"{node.id} ({node.op})"
            raise SettingError(
                f"{target_name!r} does not follow {source_name!r} through unit-wise operations only: "
                f"{between} lies between them; give layers that follow each other in the model"
            )
        feeding = dataflow.inputs_of(node.id)


def _summed_weights(module: nn.Module, source: Node, source_name: str, target_name: str) -> torch.Tensor:
    weight = module.weight.detach()
    shape = source.output_shape or ()
    # A layer's units: channels of [B, C, *spatial], features of [B, D] and of tokens [B, T, D].
    units = shape[2] if len(shape) == 3 else shape[1] if len(shape) >= 2 else 0
    if isinstance(module, nn.Linear):
        inputs = weight.shape[1]
        if inputs == units:
            return weight.abs()
        if len(shape) == 3 and inputs % units == 0:  # tokens [T, D] flattened token by token
            return weight.abs().reshape(weight.shape[0], inputs // units, units).sum(1)
        if len(shape) >= 4 and inputs % units == 0:  # a map [C, *spatial] flattened channel by channel
            return weight.abs().reshape(weight.shape[0], units, inputs // units).sum(2)
        raise SettingError(
            f"{target_name!r} has {inputs} input features, which are not {source_name!r}'s {units} units "
            "or a flattening of them"
        )
    groups = module.groups
    per_group = weight.shape[1]
    if per_group * groups != units:
        raise SettingError(
            f"{target_name!r} reads {per_group * groups} channels, {source_name!r} has {units} units"
        )
    kernel_sums = weight.abs().flatten(2).sum(2)  # [out, in / groups]
    if groups == 1:
        return kernel_sums
    strengths = weight.new_zeros(weight.shape[0], units)
    outputs_per_group = weight.shape[0] // groups
    for group in range(groups):
        rows = slice(group * outputs_per_group, (group + 1) * outputs_per_group)
        strengths[rows, group * per_group : (group + 1) * per_group] = kernel_sums[rows]
    return strengths
