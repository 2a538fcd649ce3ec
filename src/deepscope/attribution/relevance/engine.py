"""The LRP engine: one forward pass that builds a relevance graph instead of a gradient graph, one backward pass.

While the model runs, a ``TorchFunctionMode`` sees every tensor operation on the path from the input to the
output: functional calls inside custom modules (``F.conv2d`` in a ``Conv2d`` subclass), one activation module
reused in many places, and tensor arithmetic such as the residual ``x + inputs`` in a block's ``forward``. Each
operation becomes a small autograd function whose backward pass is its LRP rule:

- convolutions and dense layers: the rule the composite assigns (epsilon, z+, gamma, ...), see ``rules.py``;
- a batch norm right after one of them is folded into it (weights scaled, bias shifted) for the rule's
  purposes, so the rule sees one linear layer, as after Zennit's batch-norm canonizer. Nothing of the model is
  changed: the folded parameters exist only inside the call;
- sums of two activations (residual connections) and average pooling share relevance in proportion to each
  input's contribution (``x_i R / Σx``, Zennit's ``Norm`` rule), so relevance is conserved through them;
- element-wise activations, batch norms not preceded by a linear layer and affine maps with constants pass
  relevance through unchanged (Zennit's ``Pass`` rule);
- max pooling, padding, reshaping, slicing, concatenation and dropout use their ordinary gradient, which moves
  relevance without changing it;
- anything else on the path (a product of two activations, a softmax, a layer norm, ...) raises
  :class:`RelevanceError` naming the operation and the layer it runs in.

Relevance starts at the output as the target's score: ``output * d score / d output`` (for a class target, the
one-hot vector times the logits, as Zennit's attributor does).
"""

from __future__ import annotations

import fnmatch
import sys
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from deepscope.attribution.base import chunks, target_rows, target_scores
from deepscope.attribution.relevance.layers import (
    CONVOLUTIONS,
    LinearLayer,
    RelevanceError,
    bind_convolution,
    convolution_layer,
)
from deepscope.attribution.relevance.rules import InputDomain, Rule, stabilize
from deepscope.attribution.targets import TargetLike
from deepscope.errors import SettingError
from deepscope.probe.graph import op_name
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model


@dataclass(frozen=True)
class Composite:
    """Which rule each linear layer gets.

    ``conv`` and ``linear``: rules for convolutions and dense layers. ``first``: the rule for the layers that take
    the model input (through padding or reshaping only), or None to treat them like the others. ``layers``:
    overrides by layer name or glob (``{"features.0": ZBox(0, 1)}``), checked first, in order. ``stabilizer``:
    the ε of the proportional rule used for sums (residual connections) and average pooling.

    >>> from deepscope.attribution.relevance import Epsilon, Gamma
    >>> Composite(conv=Gamma(0.25), linear=Epsilon()).rule_for("features.3", "conv", first=False)
    Gamma(gamma=0.25, stabilizer=1e-06)
    """

    conv: Rule
    linear: Rule
    first: Rule | None = None
    layers: Mapping[str, Rule] = field(default_factory=dict)
    stabilizer: float = 1e-6

    def rule_for(self, name: str, kind: str, first: bool) -> Rule:
        """The rule of the layer ``name`` of ``kind`` ('conv' or 'linear'); ``first`` if it takes the input."""
        for pattern, rule in self.layers.items():
            if fnmatch.fnmatchcase(name, pattern):
                return rule
        if first and self.first is not None:
            return self.first
        return self.conv if kind == "conv" else self.linear

    def needs_bounds(self) -> bool:
        rules = [self.first, *self.layers.values()]
        return any(rule is not None and rule.needs_bounds for rule in rules)


@dataclass
class LayerRule:
    """What the engine did at one convolution / dense layer call: the rule, and the batch norm folded into it."""

    layer: str
    kind: str
    rule: Rule
    first: bool
    batch_norm: str | None = None


# ----------------------------------------------------------------------------------------------------------
# autograd functions: forward computes the model's value, backward applies the LRP rule


@dataclass
class _Step:
    layer: LinearLayer
    rule: Rule
    domain: InputDomain | None
    compute: Callable[[torch.Tensor], torch.Tensor] | None


class _LinearRule(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, step: _Step) -> torch.Tensor:
        z = step.compute(x)
        step.compute = None  # drop the closure (and what it holds) once the value exists
        ctx.step = step
        ctx.input_shape = x.shape
        ctx.save_for_backward(x if step.rule.uses_input else None, z if step.rule.uses_output else None)
        return z

    @staticmethod
    def backward(ctx, r: torch.Tensor) -> tuple[torch.Tensor, None]:
        x, z = ctx.saved_tensors
        step = ctx.step
        return step.rule.relevance(step.layer, r, x, z, ctx.input_shape, step.domain), None


class _PassRule(torch.autograd.Function):
    """Relevance passes through unchanged (summed over broadcast dimensions)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        ctx.input_shape = x.shape
        out = compute(x)
        return out.clone() if out is x else out

    @staticmethod
    def backward(ctx, r: torch.Tensor) -> tuple[torch.Tensor, None]:
        return (r if r.shape == ctx.input_shape else r.sum_to_size(ctx.input_shape)), None


class _SumRule(torch.autograd.Function):
    """``z = ca·a + cb·b``: each term gets relevance in proportion to its contribution, ``ca·a·R / z``."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, ca: float, cb: float, epsilon: float) -> torch.Tensor:
        if (ca, cb) == (1, 1):
            z = a + b
        elif (ca, cb) == (1, -1):
            z = a - b
        else:
            z = ca * a + cb * b
        ctx.save_for_backward(a, b, z)
        ctx.coefficients = (ca, cb)
        ctx.epsilon = epsilon
        return z

    @staticmethod
    def backward(ctx, r: torch.Tensor):
        a, b, z = ctx.saved_tensors
        ca, cb = ctx.coefficients
        s = r / stabilize(z, ctx.epsilon)
        ra = a * s if ca == 1 else ca * a * s
        rb = b * s if cb == 1 else cb * b * s
        return ra.sum_to_size(a.shape), rb.sum_to_size(b.shape), None, None, None


class _ProportionalRule(torch.autograd.Function):
    """A bias-free linear map ``z = f(x)`` (average pooling, mean, sum): ``R_i = x_i Σ_j f_ji R_j / z_j``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, compute: Callable[[torch.Tensor], torch.Tensor], epsilon: float):
        z = compute(x)
        ctx.compute = compute
        ctx.epsilon = epsilon
        ctx.save_for_backward(x, z)
        return z

    @staticmethod
    def backward(ctx, r: torch.Tensor):
        x, z = ctx.saved_tensors
        s = r / stabilize(z, ctx.epsilon)
        with torch.enable_grad():
            stand_in = x.detach().requires_grad_()
            (adjoint,) = torch.autograd.grad(ctx.compute(stand_in), stand_in, s)
        return x * adjoint, None, None


# ----------------------------------------------------------------------------------------------------------
# which operation is which

ACTIVATIONS = {
    "relu",
    "relu6",
    "hardtanh",
    "leaky_relu",
    "rrelu",
    "prelu",
    "elu",
    "selu",
    "celu",
    "gelu",
    "silu",
    "mish",
    "sigmoid",
    "hardsigmoid",
    "tanh",
    "softplus",
    "softsign",
    "hardswish",
    "logsigmoid",
    "threshold",
    "clamp",
    "clamp_min",
    "clamp_max",
    "clip",
    "softshrink",
    "hardshrink",
    "tanhshrink",
}
PROPORTIONAL = {
    "avg_pool1d",
    "avg_pool2d",
    "avg_pool3d",
    "adaptive_avg_pool1d",
    "adaptive_avg_pool2d",
    "adaptive_avg_pool3d",
    "mean",
    "sum",
}
# Affine in the active operand when the other operand is a constant (relevance passes through).
ARITHMETIC = {"add", "sub", "mul", "div", "truediv", "true_divide", "neg", "positive"}
# Operations whose gradient moves relevance without changing it (or selects, as max pooling does).
STRUCTURAL = {
    "view",
    "view_as",
    "reshape",
    "reshape_as",
    "flatten",
    "unflatten",
    "permute",
    "transpose",
    "t",
    "movedim",
    "moveaxis",
    "swapaxes",
    "swapdims",
    "contiguous",
    "clone",
    "squeeze",
    "unsqueeze",
    "cat",
    "concat",
    "concatenate",
    "stack",
    "hstack",
    "vstack",
    "getitem",
    "narrow",
    "select",
    "split",
    "split_with_sizes",
    "tensor_split",
    "chunk",
    "unbind",
    "pad",
    "constant_pad_nd",
    "zero_pad2d",
    "reflection_pad1d",
    "reflection_pad2d",
    "reflection_pad3d",
    "replication_pad1d",
    "replication_pad2d",
    "replication_pad3d",
    "max_pool1d",
    "max_pool2d",
    "max_pool3d",
    "max_pool1d_with_indices",
    "max_pool2d_with_indices",
    "max_pool3d_with_indices",
    "adaptive_max_pool1d",
    "adaptive_max_pool2d",
    "adaptive_max_pool3d",
    "adaptive_max_pool1d_with_indices",
    "adaptive_max_pool2d_with_indices",
    "adaptive_max_pool3d_with_indices",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "feature_dropout",
    "alpha_dropout",
    "feature_alpha_dropout",
    "to",
    "float",
    "double",
    "half",
    "bfloat16",
    "type",
    "type_as",
    "roll",
    "flip",
    "pixel_shuffle",
    "pixel_unshuffle",
    "channel_shuffle",
    "native_channel_shuffle",
    "setitem",
    "T",
    "mT",
}
_HINTS = {
    "mul": "a product of two activations (a gate, squeeze-and-excitation, attention) has no LRP rule here",
    "matmul": "a product of two activations (attention) has no LRP rule here",
    "softmax": "LRP explains a score; make the model return logits (drop the final softmax)",
    "log_softmax": "LRP explains a score; make the model return logits (drop the final log-softmax)",
    "layer_norm": "normalization by statistics of the input itself is not linear",
    "group_norm": "normalization by statistics of the input itself is not linear",
    "instance_norm": "normalization by statistics of the input itself is not linear",
    "interpolate": "resampling has no LRP rule here",
}


def _is_active(value: Any) -> bool:
    return isinstance(value, torch.Tensor) and value.grad_fn is not None


def _tensors_in(value: Any) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors_in(item)


def _active_in(args: tuple, kwargs: dict) -> list[torch.Tensor]:
    found = []
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            if value.grad_fn is not None:
                found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(t for t in _tensors_in(value) if t.grad_fn is not None)
    return found


def _substitute(value: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    if value is old:
        return new
    if isinstance(value, list):
        return [_substitute(item, old, new) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_substitute(item, old, new) for item in value)
    return value


def _out_of_place(raw: str, args: tuple, kwargs: dict) -> tuple[tuple, dict, bool]:
    """The arguments of an element-wise call with its ``inplace`` flag turned off, and whether the call still
    writes into its input (``relu_``, ``x += 1``) so that the input must be copied first."""
    if kwargs.get("inplace") is True:
        return args, {**kwargs, "inplace": False}, False
    if raw.startswith("__i") or (raw.endswith("_") and not raw.endswith("__")):
        return args, kwargs, True
    if any(value is True for value in args[1:]):  # F.hardtanh(x, 0, 6, True): the positional inplace flag
        return tuple(False if value is True else value for value in args), kwargs, False
    return args, kwargs, False


def _bind(names: tuple[str, ...], args: tuple, kwargs: dict) -> dict[str, Any]:
    bound = dict(zip(names, args, strict=False))
    bound.update(kwargs)
    return bound


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training", "momentum", "eps")


# ----------------------------------------------------------------------------------------------------------
# the tracer


class _RelevanceTracer(TorchFunctionMode):
    def __init__(
        self, module: nn.Module, composite: Composite, bounds: tuple[torch.Tensor, torch.Tensor] | None
    ):
        super().__init__()
        self.root = module
        self.composite = composite
        self.module_names = {id(sub): name for name, sub in module.named_modules()}
        self.param_owners = {
            id(param): name for name, sub in module.named_modules() for param in sub.parameters(recurse=False)
        }
        self.records: list[LayerRule] = []
        # layer outputs a batch norm may be folded into: id -> (weak reference, step, layer input, record)
        self._pending: dict[int, tuple[weakref.ref, _Step, torch.Tensor, LayerRule]] = {}
        # the model input seen through structural or constant-affine ops: id -> (weak reference, InputDomain)
        self._pixels: dict[int, tuple[weakref.ref, tuple[torch.Tensor, torch.Tensor] | None]] = {}
        self._track_pixels = composite.first is not None or composite.needs_bounds()
        self._bounds = bounds

    # -- bookkeeping -----------------------------------------------------------------------------------

    def mark_input(self, x: torch.Tensor) -> None:
        if self._track_pixels:
            low, high = self._bounds if self._bounds is not None else (None, None)
            self._remember(self._pixels, x, InputDomain(low, high, torch.ones_like(x)))

    @staticmethod
    def _remember(table: dict, tensor: torch.Tensor, value: Any) -> None:
        key = id(tensor)
        table[key] = (weakref.ref(tensor, lambda _ref, key=key: table.pop(key, None)), value)

    def _domain(self, tensor: torch.Tensor) -> InputDomain | None:
        """The input domain of ``tensor`` if it is the model input seen through structural or affine ops."""
        entry = self._pixels.get(id(tensor))
        if entry is None or entry[0]() is not tensor:
            return None
        return entry[1]

    def _propagate_pixels(
        self, source: torch.Tensor, out: Any, compute: Callable, affine: bool = False
    ) -> None:
        """``out = compute(source)`` by a structural op (or, ``affine``, an element-wise affine map with
        constants): if ``source`` is (derived from) the model input, so is ``out``; its bounds are the op applied
        to the bounds and its support the op applied to the support."""
        if not self._track_pixels or not _is_active(out):
            return
        domain = self._domain(source)
        if domain is None:
            return
        if affine:
            if out.shape != source.shape:
                return
            support = domain.support
        else:
            with torch.no_grad():
                support = compute(domain.support)
        low, high = domain.low, domain.high
        if low is not None:
            with torch.no_grad():
                low, high = compute(low), compute(high)
            low, high = torch.minimum(low, high), torch.maximum(low, high)  # a negative scale swaps them
        self._remember(self._pixels, out, InputDomain(low, high, support))

    def calling_layer(self) -> tuple[str, str]:
        """The innermost module of the model running now, as (dotted name, type name)."""
        frame = sys._getframe(1)
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, nn.Module) and id(candidate) in self.module_names:
                name = self.module_names[id(candidate)]
                return name or "<model>", type(candidate).__name__
            frame = frame.f_back
        return "<model>", type(self.root).__name__

    def unsupported(self, op: str, reason: str | None = None) -> RelevanceError:
        layer, kind = self.calling_layer()
        reason = (
            reason or _HINTS.get(op) or "it is not a linear layer, a sum, a pooling or an element-wise map"
        )
        return RelevanceError(f"LRP has no rule for `{op}` in layer {layer!r} ({kind}): {reason}")

    # -- dispatch --------------------------------------------------------------------------------------

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        active = _active_in(args, kwargs)
        if not active:
            # Off the input's path (parameters, shapes, constants): no autograd graph, no parameter gradients.
            with torch.no_grad():
                return func(*args, **kwargs)
        raw = getattr(func, "__name__", "")
        if raw == "__get__":  # a property such as .T or .data: name it by the property
            raw = getattr(getattr(func, "__self__", None), "__name__", raw)
        name = op_name(raw)
        if name in CONVOLUTIONS or name == "linear":
            return self._linear(func, name, args, kwargs, active)
        if name == "batch_norm":
            return self._batch_norm(func, args, kwargs, active)
        if name in ACTIVATIONS:
            return self._pass(func, raw, args, kwargs, active, name)
        if name in ARITHMETIC:
            return self._arithmetic(func, raw, name, args, kwargs, active)
        if name in PROPORTIONAL:
            return self._proportional(func, name, args, kwargs, active)
        out = func(*args, **kwargs)
        if name in STRUCTURAL:
            if len(active) == 1 and isinstance(out, torch.Tensor):
                self._propagate_pixels(
                    active[0], out, lambda t: func(*_substitute(args, active[0], t), **kwargs)
                )
            return out
        if any(_is_active(t) for t in _tensors_in(out)):
            raise self.unsupported(name)
        return out  # a query (size, dim, ...) or an op that detaches

    def _single(self, op: str, active: list[torch.Tensor]) -> torch.Tensor:
        if len(active) != 1:
            raise self.unsupported(
                op, _HINTS.get(op) or f"{len(active)} of its arguments depend on the input"
            )
        return active[0]

    def _linear(self, func, op, args, kwargs, active):
        if op == "linear":
            bound = _bind(("input", "weight", "bias"), args, kwargs)
        else:
            bound = bind_convolution(op, args, kwargs)
        x, weight, bias = bound["input"], bound["weight"], bound.get("bias")
        if not _is_active(x) or _is_active(weight) or _is_active(bias):
            raise self.unsupported(op, "its weights depend on the input")
        name = self.param_owners.get(id(weight)) or self.calling_layer()[0]
        weight = weight.detach()
        bias = None if bias is None else bias.detach()
        if op == "linear":
            layer = LinearLayer(name, "linear", weight, bias)
        else:
            layer = convolution_layer(name, op, bound, weight, bias)
        domain = self._domain(x) if self._track_pixels else None
        first = domain is not None
        rule = self.composite.rule_for(name, layer.kind, first)
        if (
            rule.needs_bounds
            and getattr(rule, "low", None) is None
            and (domain is None or domain.low is None)
        ):
            raise RelevanceError(
                f"{rule!r} at layer {name!r} has no bounds: the layer does not take the model input directly, so "
                "give the rule the bounds of its input, ZBox(low=..., high=...)"
            )
        record = LayerRule(name, layer.kind, rule, first and rule is self.composite.first)
        self.records.append(record)
        step = _Step(layer, rule, domain, lambda t: func(*_substitute(args, x, t), **kwargs))
        z = _LinearRule.apply(x, step)
        self._remember(self._pending, z, (step, x, record))
        return z

    def _batch_norm(self, func, args, kwargs, active):
        bound = _bind(_BATCH_NORM_ARGS, args, kwargs)
        t = self._single("batch_norm", active)
        if t is not bound["input"]:
            raise self.unsupported("batch_norm", "its statistics depend on the input")
        entry = self._pending.get(id(t))
        mean, var = bound.get("running_mean"), bound.get("running_var")

        def compute(value: torch.Tensor) -> torch.Tensor:
            return func(*_substitute(args, t, value), **kwargs)

        if entry is not None and entry[0]() is t and mean is not None and not bound.get("training", False):
            step, x, record = entry[1]
            layer = step.layer
            if t.shape[1] == layer.out_channels() and (layer.kind == "conv" or t.ndim == 2):
                weight, shift = bound.get("weight"), bound.get("bias")
                with torch.no_grad():
                    scale = (var + bound.get("eps", 1e-5)).rsqrt()
                    if weight is not None:
                        scale = scale * weight
                    offset = -mean * scale
                    if shift is not None:
                        offset = offset + shift
                bn_name = self.param_owners.get(id(weight)) if weight is not None else None
                bn_name = bn_name or self.calling_layer()[0]
                source = t.detach()
                fused = _Step(
                    layer.with_batch_norm(bn_name, scale.detach(), offset.detach()),
                    step.rule,
                    step.domain,
                    lambda _x: compute(source),
                )
                record.batch_norm = bn_name
                return _LinearRule.apply(x, fused)
        out = _PassRule.apply(t, compute)
        self._propagate_pixels(t, out, compute, affine=True)
        return out

    def _pass(self, func, raw, args, kwargs, active, op):
        t = self._single(op, active)
        args, kwargs, copy = _out_of_place(raw, args, kwargs)

        def compute(value: torch.Tensor) -> torch.Tensor:
            return func(*_substitute(args, t, value.clone() if copy else value), **kwargs)

        return _PassRule.apply(t, compute)

    def _arithmetic(self, func, raw, op, args, kwargs, active):
        if op in ("add", "sub") and len(active) == 2 and all(any(a is b for b in args[:2]) for a in active):
            # a sum of two activations, e.g. a residual connection
            first, second = args[0], args[1]
            alpha = kwargs.get("alpha", 1)
            ca, cb = 1.0, float(alpha) * (-1.0 if op == "sub" else 1.0)
            if raw in ("rsub", "__rsub__"):  # other - alpha * self
                ca, cb = -float(alpha), 1.0
            return _SumRule.apply(first, second, ca, cb, self.composite.stabilizer)
        t = self._single(op, active)
        copy = _out_of_place(raw, args, kwargs)[2]

        def compute(value: torch.Tensor) -> torch.Tensor:
            return func(*_substitute(args, t, value.clone() if copy else value), **kwargs)

        out = _PassRule.apply(t, compute)
        self._propagate_pixels(t, out, compute, affine=True)
        return out

    def _proportional(self, func, op, args, kwargs, active):
        t = self._single(op, active)

        def compute(value: torch.Tensor) -> torch.Tensor:
            return func(*_substitute(args, t, value), **kwargs)

        return _ProportionalRule.apply(t, compute, self.composite.stabilizer)


# ----------------------------------------------------------------------------------------------------------
# entry points


def input_bounds(
    vm: VisionModel,
    inputs: torch.Tensor,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lowest and highest values each input entry can take, shaped like ``inputs``.

    By default the pixel range [0, 1] through the model's normalization (``(0 - mean) / std`` and
    ``(1 - mean) / std`` per channel); ``low``/``high`` (floats, per-channel sequences or tensors broadcastable to
    the input) override it.

    >>> import torch, deepscope as ds
    >>> low, high = input_bounds(ds.load_model("zoo:lenet_mnist"), torch.zeros(1, 1, 28, 28))
    >>> round(float(low.min()), 4) < 0 < round(float(high.max()), 4)
    True
    """
    if (low is None) != (high is None):
        raise SettingError("give both low and high, or neither (to use the model's normalization)")
    if low is None:
        mean = torch.as_tensor(vm.preprocessing.mean, dtype=inputs.dtype, device=inputs.device)
        std = torch.as_tensor(vm.preprocessing.std, dtype=inputs.dtype, device=inputs.device)
        channels = inputs.shape[1]
        if mean.numel() != channels:
            if bool((mean == mean[0]).all()) and bool((std == std[0]).all()):
                mean, std = mean[:1].expand(channels), std[:1].expand(channels)
            else:
                raise SettingError(
                    f"{vm.name} normalizes {mean.numel()} channels but the input has {channels}; "
                    "pass low= and high= (the input's value bounds) explicitly"
                )
        low, high = (0 - mean) / std, (1 - mean) / std
        low, high = torch.minimum(low, high), torch.maximum(low, high)
    shaped = []
    for bound in (low, high):
        bound = torch.as_tensor(bound, dtype=inputs.dtype, device=inputs.device)
        if bound.ndim == 1 and bound.numel() == inputs.shape[1]:
            bound = bound.view(1, -1, *([1] * (inputs.ndim - 2)))
        try:
            shaped.append(bound.expand_as(inputs).contiguous())
        except RuntimeError:
            raise SettingError(
                f"bounds of shape {list(bound.shape)} do not broadcast to the input's {list(inputs.shape)}"
            ) from None
    if bool((shaped[0] > shaped[1]).any()):
        raise SettingError("low must not exceed high")
    return shaped[0], shaped[1]


def propagate(
    model: VisionModel | nn.Module,
    inputs: torch.Tensor,
    composite: Composite,
    target: TargetLike = None,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    batch_size: int | None = None,
) -> tuple[torch.Tensor, list[LayerRule]]:
    """Relevance of every input entry for ``target`` under ``composite``, and the rule each layer got.

    Runs the model in eval mode (each module's own flag restored afterwards) with one forward and one backward
    pass per chunk of ``batch_size`` samples, images channels-last where the model takes them. The model is not
    modified.
    """
    vm = as_vision_model(model)
    module = vm.module
    inputs = inputs.to(vm.device)
    bounds = input_bounds(vm, inputs, low, high) if composite.needs_bounds() else None
    batch = inputs.shape[0]
    size = batch if batch_size is None else batch_size
    found, records = [], []
    with evaluation_mode(module):
        for rows in chunks(batch, size, inputs.device):
            chunk_bounds = None if bounds is None else (bounds[0][rows], bounds[1][rows])
            relevance, records = vm.in_fast_layout(
                lambda x, rows=rows, chunk_bounds=chunk_bounds: _propagate_chunk(
                    module, x, composite, target_rows(target, rows, batch), chunk_bounds, rows
                ),
                inputs[rows],
            )
            found.append(relevance.contiguous())
    return torch.cat(found) if len(found) > 1 else found[0], records


def _propagate_chunk(
    module: nn.Module,
    inputs: torch.Tensor,
    composite: Composite,
    target: TargetLike,
    bounds: tuple[torch.Tensor, torch.Tensor] | None,
    samples: torch.Tensor,
) -> tuple[torch.Tensor, list[LayerRule]]:
    """LRP relevance of one chunk of inputs (``samples``: their places in the caller's batch)."""
    # the input keeps the memory layout it comes in (see VisionModel.in_fast_layout)
    leaf = inputs.detach().requires_grad_()
    tracer = _RelevanceTracer(module, composite, bounds)
    with torch.enable_grad():
        x = leaf.view_as(leaf)  # an autograd node, so the tracer sees the input as on the path
        tracer.mark_input(x)
        with tracer:
            output = module(x)
        outputs = [t for t in _tensors_in(output) if _is_active(t)]
        if not tracer.records:
            raise RelevanceError(
                "LRP found no convolution or dense layer on the path from the input to the output "
                "(a TorchScript or compiled model runs outside Python, where LRP cannot follow it)"
            )
        if not outputs:
            raise RelevanceError(
                "the model's output does not depend on its input through operations LRP follows"
            )
        if composite.first is not None and not any(record.first for record in tracer.records):
            raise RelevanceError(
                f"the composite has a rule for the first layer ({composite.first!r}) but no convolution or dense "
                "layer takes the model input directly (through padding or reshaping only)"
            )
        scores, _ = target_scores(target, output, samples)
        # Relevance at the output: the score's own decomposition, output * d score / d output.
        grads = torch.autograd.grad(scores.sum(), outputs, allow_unused=True)
        starts = [
            (torch.zeros_like(out) if grad is None else grad * out).detach()
            for out, grad in zip(outputs, grads, strict=True)
        ]
        (relevance,) = torch.autograd.grad(outputs, leaf, starts)
    return relevance.detach(), tracer.records


def trace_rules(
    model: VisionModel | nn.Module, inputs: torch.Tensor, composite: Composite
) -> list[LayerRule]:
    """The rule ``composite`` gives each convolution / dense layer call, and the batch norms folded into them,
    for inputs like ``inputs`` (one forward pass, no backward).

    >>> import deepscope as ds
    >>> from deepscope.attribution.relevance import Composite, Epsilon, Flat, ZPlus
    >>> rules = trace_rules(ds.load_model("zoo:lenet_mnist"), torch.zeros(1, 1, 28, 28),
    ...                     Composite(conv=ZPlus(), linear=Epsilon(), first=Flat()))
    >>> [(r.layer, type(r.rule).__name__) for r in rules][:3]
    [('conv1', 'Flat'), ('conv2', 'ZPlus'), ('fc1', 'Epsilon')]
    """
    vm = as_vision_model(model)
    inputs = inputs.to(vm.device)
    bounds = input_bounds(vm, inputs) if composite.needs_bounds() else None
    tracer = _RelevanceTracer(vm.module, composite, bounds)
    with evaluation_mode(vm.module), torch.enable_grad():
        leaf = inputs.detach().requires_grad_()
        x = leaf.view_as(leaf)
        tracer.mark_input(x)
        with tracer:
            vm.module(x)
    return tracer.records


def lrp(
    model: VisionModel | nn.Module,
    inputs: torch.Tensor,
    composite: Composite,
    target: TargetLike = None,
    low: float | torch.Tensor | None = None,
    high: float | torch.Tensor | None = None,
    batch_size: int | None = None,
) -> torch.Tensor:
    """Layer-wise relevance propagation (Bach et al. 2015) of ``target`` with the rules of ``composite``.

    Returns the signed relevance of every input entry, ``[B,C,H,W]``, raw. ``low``/``high`` bound the input for
    z-box rules (default: pixels [0, 1] through the model's normalization). The model runs in eval mode inside
    the call and is left exactly as found; ``batch_size`` bounds how many samples go through at once.

    >>> import deepscope as ds
    >>> from deepscope.attribution.relevance import Composite, Epsilon, Gamma, WSquare
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k().images[:2])
    >>> lrp(vm, x, Composite(conv=Gamma(0.5), linear=Epsilon(), first=WSquare()), target=[3, 3]).shape
    torch.Size([2, 1, 28, 28])
    """
    relevance, _ = propagate(model, inputs, composite, target, low, high, batch_size)
    return relevance
