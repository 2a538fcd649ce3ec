"""Gradient family: saliency, input x gradient, SmoothGrad, integrated gradients, guided backprop, deconvnet.

Every map here is pixel-space, signed, ``[B,C,H,W]``, computed from gradients of the target score with
respect to the input. Saliency and input x gradient consume one shared forward/backward (``ds.explain``);
SmoothGrad and integrated gradients run ``samples``/``steps`` of them, streamed in sub-batches of
``batch_size`` model inputs with the sums kept detached; guided backprop and deconvnet run one, with the
gradient of every ReLU replaced inside a ``with`` block.

Which ReLUs are modified: every call of ``torch.relu``/``Tensor.relu``/``F.relu`` (also in place, which is how
``nn.ReLU`` runs), ``F.relu6`` and ``F.hardtanh`` with a lower bound of 0 (how ``nn.ReLU6`` runs), whether the
call comes from a module, a reused module (EfficientNet-Lite0 runs one ``ReLU6`` module many times) or
functional code: they are intercepted with a ``TorchFunctionMode`` for the duration of the forward, so the
model is never edited. Not modified (a model that has none of the above raises an error instead of silently
computing a plain gradient): ReLUs written as ``clamp``/``max``/``where``, other activations (GELU, SiLU,
LeakyReLU...), and ReLUs inside TorchScript modules or compiled graphs, which Python interception cannot see.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from deepscope.attribution.base import Attribution, MethodError, chunks, register
from deepscope.attribution.passes import (
    Needs,
    Pass,
    SharedPassMethod,
    fixed_target,
    forward_backward,
    run_shared,
)
from deepscope.attribution.targets import TargetLike


@register(
    "saliency",
    family="gradient",
    space="pixel",
    passes="1 forward + 1 backward (shared)",
    reference="Simonyan, Vedaldi & Zisserman 2014, Deep Inside Convolutional Networks: the signed gradient",
)
class Saliency(SharedPassMethod):
    """Gradient of the target score with respect to the input (Simonyan et al. 2014).

    Returns the signed gradient ``[B,C,H,W]``; the paper's map is its maximum absolute value over channels,
    which ``ds.render.heatmap(..., reduce='max_abs')`` draws.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.zeros(2, 1, 28, 28), "saliency", target=3).shape
    torch.Size([2, 1, 28, 28])
    """

    sensitivity = True

    def needs(self) -> Needs:
        return Needs(input_gradient=True)

    def from_pass(self, pass_: Pass) -> torch.Tensor:
        return pass_.input_gradient


@register(
    "input_x_gradient",
    family="gradient",
    space="pixel",
    passes="1 forward + 1 backward (shared)",
    reference="Shrikumar et al. 2016, Not Just a Black Box: input times gradient",
)
class InputXGradient(SharedPassMethod):
    """The input times the gradient of the target score (Shrikumar et al. 2016), signed ``[B,C,H,W]``.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> float(ds.attribute(vm, torch.zeros(1, 1, 28, 28), "input_x_gradient").abs().sum())
    0.0
    """

    def needs(self) -> Needs:
        return Needs(input_gradient=True)

    def from_pass(self, pass_: Pass) -> torch.Tensor:
        return pass_.inputs * pass_.input_gradient


# ----------------------------------------------------------------------------------------------------------
# integrated gradients


INTEGRATION_RULES = ("gausslegendre", "riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid")


def integration_rule(rule: str, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes ``alpha`` in [0, 1] and weights of a quadrature rule for the path integral, in float64.

    ``gausslegendre`` (Captum's default) uses Gauss-Legendre nodes mapped to [0, 1]; the Riemann rules put
    ``steps`` equal-width nodes at the left ends, right ends or middles of ``steps`` intervals; the trapezoid
    rule puts ``steps`` nodes at ``linspace(0, 1, steps)`` with weights ``1/(steps-1)``, halved at both ends,
    so that the weights sum to 1 (Captum's ``riemann_trapezoid`` uses ``1/steps``, so its sums are
    ``(steps-1)/steps`` of this).

    >>> alphas, weights = integration_rule("riemann_middle", 4)
    >>> alphas.tolist(), float(weights.sum())
    ([0.125, 0.375, 0.625, 0.875], 1.0)
    """
    check_integration(rule, steps)
    index = np.arange(steps, dtype=np.float64)
    if rule == "gausslegendre":
        nodes, weights = np.polynomial.legendre.leggauss(steps)
        return (nodes + 1) / 2, weights / 2
    if rule == "riemann_trapezoid":
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
        return index / (steps - 1), weights
    offset = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}[rule]
    return (index + offset) / steps, np.full(steps, 1 / steps)


def check_integration(rule: str, steps: int) -> None:
    """A clear error for an unknown ``rule`` or too few ``steps``, naming only what the caller chose."""
    if rule not in INTEGRATION_RULES:
        raise MethodError(f"unknown integration rule {rule!r}; choose one of {', '.join(INTEGRATION_RULES)}")
    if rule == "riemann_trapezoid" and (not isinstance(steps, int) or steps < 2):
        raise MethodError(
            f"rule='riemann_trapezoid' needs steps >= 2 (its two end points), got steps={steps!r}"
        )
    if not isinstance(steps, int) or steps < 1:
        raise MethodError(f"steps must be an int >= 1, got steps={steps!r}")


def baseline_like(
    baseline: float | torch.Tensor, inputs: torch.Tensor, what: str = "baseline"
) -> torch.Tensor:
    """A scalar or a tensor broadcastable to the input batch -> a ``[B,C,H,W]`` tensor (a view, no copy)."""
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return torch.full(
            (1,) * inputs.ndim, float(baseline), dtype=inputs.dtype, device=inputs.device
        ).expand_as(inputs)
    if isinstance(baseline, torch.Tensor):
        try:
            return baseline.to(inputs.device, inputs.dtype).expand_as(inputs)
        except RuntimeError:
            raise MethodError(
                f"{what} of shape {list(baseline.shape)} does not broadcast to the inputs {list(inputs.shape)}"
            ) from None
    raise MethodError(f"{what} must be a number or a tensor, got {type(baseline).__name__}")


@register(
    "integrated_gradients",
    family="gradient",
    space="pixel",
    passes="steps x (1 forward + 1 backward)",
    reference="Sundararajan, Taly & Yan 2017, Axiomatic Attribution for Deep Networks: integrated gradients "
    "along the straight path from a baseline, by quadrature",
)
class IntegratedGradients(Attribution):
    """Integrated gradients (Sundararajan et al. 2017): ``(x - x') * integral_0^1 grad f(x' + a (x - x')) da``.

    The integral is a quadrature over ``steps`` points with ``rule`` (see :func:`integration_rule`; the
    default, Gauss-Legendre, is Captum's); ``baseline`` x' is a number or a tensor broadcastable to the batch.
    The ``steps x B`` path points go through the model ``batch_size`` at a time. The attributions sum to
    ``f(x) - f(x')`` up to the quadrature error (completeness).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "integrated_gradients", steps=8).shape
    torch.Size([1, 1, 28, 28])
    """

    @dataclass(frozen=True, eq=False)
    class Options(Attribution.Options):
        steps: int = 50
        rule: str = "gausslegendre"
        baseline: float | torch.Tensor = 0.0

        def check(self) -> None:
            check_integration(self.rule, self.steps)

    @classmethod
    def quick_options(cls, size: tuple[int, int]) -> dict:
        return {"steps": 8}

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        size = self.chunk_size(inputs)
        batch, steps = inputs.shape[0], self.options.steps
        target = fixed_target(self.vm, inputs, target, size, self.passes)
        baseline = baseline_like(self.options.baseline, inputs)
        difference = inputs - baseline
        nodes, node_weights = integration_rule(self.options.rule, steps)
        alphas = torch.as_tensor(nodes, dtype=inputs.dtype, device=inputs.device)
        weights = torch.as_tensor(node_weights, dtype=inputs.dtype, device=inputs.device)
        total = torch.zeros_like(inputs)
        # Path points are numbered step-major (point j = step j // B of sample j % B).
        for points in chunks(steps * batch, size, inputs.device):
            rows, step = points % batch, points // batch
            scale = alphas[step].view(-1, 1, 1, 1)
            path = baseline[rows] + scale * difference[rows]
            gradient = forward_backward(self.vm, path, rows, target, batch).input_gradient
            total.index_add_(0, rows, gradient * weights[step].view(-1, 1, 1, 1))
            self.passes.add(len(points), batch, backward=True)
        return total * difference


# ----------------------------------------------------------------------------------------------------------
# SmoothGrad


@register(
    "smoothgrad",
    family="gradient",
    space="pixel",
    passes="samples x (1 forward + 1 backward)",
    reference="Smilkov et al. 2017, SmoothGrad: removing noise by adding noise: the mean gradient over "
    "Gaussian-noised copies, noise relative to each image's value range",
)
class SmoothGrad(Attribution):
    """SmoothGrad (Smilkov et al. 2017): the mean of the gradients at ``samples`` noisy copies
    ``x + N(0, sigma^2)``, with ``sigma = noise_level * (max(x) - min(x))`` per image (the paper's 10-20%).

    The noise of draw ``i`` comes from a generator seeded with ``seed + i``, so results do not depend on
    ``batch_size``.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(2, 1, 28, 28), "smoothgrad", samples=4).shape
    torch.Size([2, 1, 28, 28])
    """

    sensitivity = True

    @dataclass(frozen=True, eq=False)
    class Options(Attribution.Options):
        samples: int = 50
        noise_level: float = 0.15
        seed: int = 0

        def check(self) -> None:
            if self.samples < 1:
                raise MethodError(f"smoothgrad needs samples >= 1, got {self.samples!r}")
            if self.noise_level < 0:
                raise MethodError(f"noise_level must be >= 0, got {self.noise_level}")

    @classmethod
    def quick_options(cls, size: tuple[int, int]) -> dict:
        return {"samples": 8}

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        size = self.chunk_size(inputs)
        batch, samples = inputs.shape[0], self.options.samples
        target = fixed_target(self.vm, inputs, target, size, self.passes)
        flat = inputs.flatten(1)
        sigma = (self.options.noise_level * (flat.amax(1) - flat.amin(1))).view(-1, 1, 1, 1)
        total = torch.zeros_like(inputs)
        cached: dict[int, torch.Tensor] = {}
        for points in chunks(samples * batch, size, inputs.device):
            rows, draw = points % batch, points // batch
            draws = draw.unique().tolist()
            cached = {d: cached[d] if d in cached else self._noise(d, inputs) for d in draws}
            noise = torch.empty((len(points), *inputs.shape[1:]), dtype=inputs.dtype, device=inputs.device)
            for d in draws:
                where = (draw == d).nonzero()[:, 0]
                noise[where] = cached[d][rows[where]]
            noisy = inputs[rows] + sigma[rows] * noise
            gradient = forward_backward(self.vm, noisy, rows, target, batch).input_gradient
            total.index_add_(0, rows, gradient)
            self.passes.add(len(points), batch, backward=True)
        return total / samples

    def _noise(self, draw: int, inputs: torch.Tensor) -> torch.Tensor:
        generator = torch.Generator(device=inputs.device).manual_seed(self.options.seed + draw)
        return torch.randn(inputs.shape, generator=generator, device=inputs.device, dtype=inputs.dtype)


# ----------------------------------------------------------------------------------------------------------
# guided backpropagation and deconvnet: ReLU gradients replaced for the duration of one forward


class ReluRule:
    """Which backward rule the intercepted ReLUs apply, read when the backward runs (so one forward can
    serve a plain backward and a guided one): 'plain', 'guided' or 'deconvnet'. ``count`` is how many ReLU
    calls were intercepted in the forward."""

    def __init__(self, rule: str):
        self.rule = rule
        self.count = 0


class _ModifiedRelu(torch.autograd.Function):
    """``y = relu(x)`` (or ``hardtanh(x, 0, upper)``), in place when the call was, whose backward applies
    ``state.rule``. The backward costs one fused masking kernel, as a plain ReLU's does, plus one in-place
    rectification for the guided rule."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, inplace: bool, state: ReluRule) -> torch.Tensor:
        if inplace:
            y = x.relu_() if upper is None else F.hardtanh_(x, 0.0, upper)
            ctx.mark_dirty(x)
        else:
            y = torch.relu(x) if upper is None else F.hardtanh(x, 0.0, upper)
        ctx.save_for_backward(y)
        ctx.upper, ctx.state = upper, state
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (y,) = ctx.saved_tensors
        rule = ctx.state.rule
        if rule == "deconvnet":  # Zeiler & Fergus: the backward signal is rectified, the forward mask ignored
            return grad.clamp(min=0), None, None, None
        # grad where the unit passed its input (0 < y, and y < upper for ReLU6), else 0; y > 0 iff x > 0
        if ctx.upper is None:
            masked = torch.ops.aten.threshold_backward(grad, y, 0.0)
        else:
            masked = torch.ops.aten.hardtanh_backward(grad, y, 0.0, ctx.upper)
        if rule == "guided":  # Springenberg et al.: forward mask and rectified backward signal
            masked = masked.clamp_(min=0)
        return masked, None, None, None


_RELU = {torch.relu, torch.Tensor.relu, F.relu}
_RELU_INPLACE = {torch.relu_, torch.Tensor.relu_}


class _InterceptRelus(TorchFunctionMode):
    def __init__(self, state: ReluRule):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        call = _relu_call(func, args, kwargs)
        if call is None:
            return func(*args, **kwargs)
        x, upper, inplace = call
        if not isinstance(x, torch.Tensor) or not x.requires_grad:
            return func(*args, **kwargs)
        self.state.count += 1
        return _ModifiedRelu.apply(x, upper, inplace, self.state)


def _relu_call(func, args: tuple, kwargs: dict) -> tuple[torch.Tensor, float | None, bool] | None:
    """(input, upper bound or None, in place) when ``func(*args, **kwargs)`` is a ReLU, else None."""

    def argument(position: int, name: str, default):
        return args[position] if len(args) > position else kwargs.get(name, default)

    if func in _RELU:
        inplace = func is F.relu and bool(argument(1, "inplace", False))
        return argument(0, "input", None), None, inplace
    if func in _RELU_INPLACE:
        return argument(0, "input", None), None, True
    if func is F.relu6:
        return argument(0, "input", None), 6.0, bool(argument(1, "inplace", False))
    if func in (F.hardtanh, F.hardtanh_):
        low, high = argument(1, "min_val", -1.0), argument(2, "max_val", 1.0)
        if low == 0:
            inplace = func is F.hardtanh_ or bool(argument(3, "inplace", False))
            return argument(0, "input", None), float(high), inplace
    return None


@contextmanager
def modified_relus(state: ReluRule) -> Iterator[ReluRule]:
    """Inside the block, every ReLU call in a forward applies ``state.rule`` in its backward."""
    with _InterceptRelus(state):
        yield state


class _ModifiedReluGradient(SharedPassMethod):
    """Shared machinery of guided backprop and deconvnet: one forward inside :func:`modified_relus`, one
    backward to the input."""

    rule = ""
    shares_pass = False  # its backward differs from the plain one

    def needs(self) -> Needs:
        return Needs(input_gradient=True)

    def from_pass(self, pass_: Pass) -> torch.Tensor:
        return pass_.input_gradient

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        state = ReluRule(self.rule)
        result = run_shared([self], inputs, target, self.batch_size, forward_context=_entering(state))[0]
        require_relus(state, self)
        return result


def _entering(state: ReluRule) -> Callable:
    return lambda: modified_relus(state)


def require_relus(state: ReluRule, method: Attribution) -> None:
    if state.count == 0:
        raise MethodError(
            f"{method.name} changes the gradient of ReLUs, but the forward of {method.vm.name} made no ReLU "
            "call deepscope can intercept (torch.relu, F.relu, nn.ReLU, F.relu6, nn.ReLU6); ReLUs written "
            "as clamp/max, other activations and TorchScript modules are not supported"
        )


@register(
    "guided_backprop",
    family="gradient",
    space="pixel",
    passes="1 forward + 1 backward",
    reference="Springenberg et al. 2015, Striving for Simplicity: guided backpropagation (ReLU backward "
    "keeps only positive gradients where the forward input was positive)",
)
class GuidedBackprop(_ModifiedReluGradient):
    """Guided backpropagation (Springenberg et al. 2015): at every ReLU the backward signal is multiplied by
    the forward mask and rectified, ``relu(g) * [x > 0]`` (``[0 < x < 6]`` for ReLU6). See the module docs
    for which ReLUs are intercepted.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "guided_backprop").shape
    torch.Size([1, 1, 28, 28])
    """

    sensitivity = True

    rule = "guided"


@register(
    "deconvnet",
    family="gradient",
    space="pixel",
    passes="1 forward + 1 backward",
    reference="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks: deconvnet "
    "backward (ReLU applied to the backward signal, forward mask ignored)",
)
class Deconvnet(_ModifiedReluGradient):
    """Deconvnet (Zeiler & Fergus 2014) as a modified backward: at every ReLU the backward signal is
    rectified, ``relu(g)``, whatever the forward input was (max-pooling switches are the gradient's own).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "deconvnet").shape
    torch.Size([1, 1, 28, 28])
    """

    sensitivity = True

    rule = "deconvnet"
