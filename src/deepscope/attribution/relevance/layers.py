"""The linear layers LRP rules act on: a convolution or a dense layer seen as ``z = op(x, weight) + bias``.

A rule needs three things from its layer: the forward map with modified parameters (``forward``), its adjoint
with respect to the input (``adjoint``, the transposed map a gradient would use), and the parameters. Both are
expressed with the same ATen kernels autograd uses for a convolution's forward and input gradient, so a rule
costs what a gradient costs per modified pass, no more.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from deepscope.attribution.base import MethodError

# Positional parameters of the functional forms, after the input (what torch.nn modules call).
CONVOLUTIONS = {
    "conv1d": (1, False),
    "conv2d": (2, False),
    "conv3d": (3, False),
    "conv_transpose1d": (1, True),
    "conv_transpose2d": (2, True),
    "conv_transpose3d": (3, True),
}
_CONV_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_TRANSPOSED_ARGS = ("input", "weight", "bias", "stride", "padding", "output_padding", "groups", "dilation")
_DEFAULTS = {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1, "output_padding": 0}


class RelevanceError(MethodError):
    """A model LRP cannot propagate relevance through (the message names the operation and its layer), or a
    convolution configured in a way the engine cannot express."""


@dataclass(frozen=True)
class LinearLayer:
    """One call of a convolution or dense layer: its parameters (detached) and geometry.

    ``name`` is the dotted path of the module that made the call (``kind`` is ``"conv"`` or ``"linear"``).
    ``folded`` names the batch norm folded into it, if any. ``adjoint`` is what a gradient would compute:

    >>> conv = torch.nn.Conv2d(2, 3, 3, stride=2, padding=1)
    >>> layer = LinearLayer("conv", "conv", conv.weight.detach(), None, (2, 2), (1, 1), (1, 1), output_padding=(0, 0))
    >>> x, s = torch.randn(1, 2, 7, 7, requires_grad=True), torch.randn(1, 3, 4, 4)
    >>> (gradient,) = torch.autograd.grad(conv(x), x, s)
    >>> torch.allclose(layer.adjoint(s, layer.weight, x.shape), gradient, atol=1e-6)
    True
    """

    name: str
    kind: str
    weight: torch.Tensor
    bias: torch.Tensor | None
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()
    transposed: bool = False
    output_padding: tuple[int, ...] = ()
    groups: int = 1
    folded: str | None = None

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The layer's map with ``weight``/``bias`` in place of its own."""
        if self.kind == "linear":
            return F.linear(x, weight, bias)
        return torch.ops.aten.convolution(
            x,
            weight,
            bias,
            self.stride,
            self.padding,
            self.dilation,
            self.transposed,
            self.output_padding,
            self.groups,
        )

    def adjoint(self, s: torch.Tensor, weight: torch.Tensor, input_shape: Sequence[int]) -> torch.Tensor:
        """The transpose of ``forward(., weight)`` applied to ``s``: what a gradient with respect to the input
        would be for output gradient ``s``. ``input_shape`` is the layer input's shape."""
        if self.kind == "linear":
            return s.matmul(weight)
        shape = list(input_shape)
        shape[0] = s.shape[0]
        stand_in = s.new_empty(1).expand(shape)
        return torch.ops.aten.convolution_backward(
            s,
            stand_in,
            weight,
            None,
            self.stride,
            self.padding,
            self.dilation,
            self.transposed,
            self.output_padding,
            self.groups,
            (True, False, False),
        )[0]

    def out_channel_scale(self, scale: torch.Tensor) -> torch.Tensor:
        """``scale`` (one factor per output channel) shaped to multiply the weight."""
        if self.kind == "linear":
            return scale[:, None]
        trailing = (1,) * (self.weight.ndim - 2)
        if not self.transposed:
            return scale.view(-1, 1, *trailing)
        # A transposed convolution's weight is [in, out / groups, *kernel]; output channel
        # g * (out / groups) + j lives in rows of group g, column j.
        in_channels, out_per_group = self.weight.shape[:2]
        per_group = scale.view(self.groups, 1, out_per_group)
        return per_group.expand(self.groups, in_channels // self.groups, out_per_group).reshape(
            in_channels, out_per_group, *trailing
        )

    def with_batch_norm(self, name: str, scale: torch.Tensor, shift: torch.Tensor) -> LinearLayer:
        """This layer followed by the per-channel affine map ``y * scale + shift`` (a batch norm in eval mode),
        as one layer: weight scaled per output channel, bias ``bias * scale + shift``."""
        bias = shift if self.bias is None else self.bias * scale + shift
        return replace(self, weight=self.weight * self.out_channel_scale(scale), bias=bias, folded=name)

    def out_channels(self) -> int:
        if self.kind == "linear" or not self.transposed:
            return self.weight.shape[0]
        return self.weight.shape[1] * self.groups


def _tuple(value: Any, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    values = tuple(int(v) for v in value)
    return values * dims if len(values) == 1 else values


def bind_convolution(name: str, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a functional convolution call, by name, with defaults filled in."""
    names = _TRANSPOSED_ARGS if CONVOLUTIONS[name][1] else _CONV_ARGS
    bound = dict(_DEFAULTS)
    bound.update(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


def convolution_layer(
    layer_name: str, op: str, bound: dict[str, Any], weight: torch.Tensor, bias: torch.Tensor | None
) -> LinearLayer:
    """A :class:`LinearLayer` for a functional convolution call ``op`` with arguments ``bound``."""
    dims, transposed = CONVOLUTIONS[op]
    kernel = weight.shape[2:]
    dilation = _tuple(bound["dilation"], dims)
    padding = bound["padding"]
    if padding == "valid":
        padding = (0,) * dims
    elif padding == "same":
        totals = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        if any(total % 2 for total in totals):
            raise RelevanceError(
                f"layer {layer_name!r} uses padding='same' with an even kernel {tuple(kernel)}, which pads one "
                "side more than the other; pad explicitly (F.pad or nn.ZeroPad2d) before the convolution"
            )
        padding = tuple(total // 2 for total in totals)
    return LinearLayer(
        name=layer_name,
        kind="conv",
        weight=weight,
        bias=bias,
        stride=_tuple(bound["stride"], dims),
        padding=_tuple(padding, dims),
        dilation=dilation,
        transposed=transposed,
        output_padding=_tuple(bound["output_padding"], dims),
        groups=int(bound["groups"]),
    )
