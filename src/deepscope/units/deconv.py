"""Projecting one unit's activation back to the input: Zeiler & Fergus 2014's deconvnet, and guided
backpropagation (Springenberg et al. 2015).

The layer's output is replaced by a map that is zero everywhere except the chosen unit at its strongest position,
where it keeps the activation's value; that map is sent back down the network. Max-pooling sends it through the
recorded switches, convolutions through their transposed filters (both exactly the gradient), and each
rectifier applies a rule instead of its derivative:

- ``"deconvnet"``: pass the positive part of the signal (``relu`` of what comes down), whatever the forward
  input was;
- ``"guided"``: pass the positive part of the signal only where the forward input was in the rectifier's
  linear range (``0 < x``, and ``x < 6`` for ReLU6).

Rectifiers are recognised as ``torch.relu`` / ``F.relu`` / ``nn.ReLU`` and ``F.relu6`` / ``nn.ReLU6`` /
``F.hardtanh(x, 0, 6)`` calls, functional or module. Other operations (batch norm, other nonlinearities) pass
their gradient. The result is the signal at the model input, ``[B,C,H,W]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from deepscope.units._forward import check_unit, layer_runner
from deepscope.zoo.vision_model import VisionModel, as_vision_model

RULES = ("deconvnet", "guided")


class _Rectifier(torch.autograd.Function):
    """``clamp(x, 0, upper)`` forward; the deconvnet or guided rule backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, guided: bool) -> torch.Tensor:
        ctx.guided = guided
        ctx.upper = upper
        if guided:
            ctx.save_for_backward(x)
        return x.clamp(0, upper) if upper is not None else x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        signal = grad.clamp_min(0)
        if ctx.guided:
            (x,) = ctx.saved_tensors
            inside = x > 0 if ctx.upper is None else (x > 0) & (x < ctx.upper)
            signal = signal * inside
        return signal, None, None


_RELU = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_, F.relu_}


class _RectifierRules(TorchFunctionMode):
    def __init__(self, guided: bool):
        super().__init__()
        self.guided = guided

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _RELU:
            return _Rectifier.apply(args[0], None, self.guided)
        if func is F.relu6:
            return _Rectifier.apply(args[0], 6.0, self.guided)
        if func is F.hardtanh:
            low, high = _hardtanh_range(args, kwargs)
            if low == 0.0:
                return _Rectifier.apply(args[0], high, self.guided)
        return func(*args, **kwargs)


def _hardtanh_range(args, kwargs) -> tuple[float, float]:
    low = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
    high = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
    return float(low), float(high)


@contextmanager
def rectifier_rules(rule: str) -> Iterator[None]:
    """Inside the block, rectifiers (functional or module) backpropagate by the deconvnet or guided rule."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    with _RectifierRules(guided=rule == "guided"):
        yield


def project(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    layer: str,
    unit: int,
    rule: str = "deconvnet",
    position: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Project unit ``unit`` of ``layer`` back to the input for each image of ``x`` (model inputs ``[B,C,H,W]``).

    The unit's strongest activation in each image (its maximum over positions, the first on ties; or the
    activation at ``position = (y, x)``) is kept with its value, all other activations of the layer are zeroed,
    and the map is sent back down by ``rule`` (``"deconvnet"``: Zeiler & Fergus 2014, "Visualizing and
    Understanding Convolutional Networks"; ``"guided"``: Springenberg et al. 2015). Returns the signal at the
    input, ``[B,C,H,W]``, raw and signed. The model runs in eval mode; its parameters get no gradient.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k().images[:2])
    >>> ds.units.project(vm, x, "conv2", unit=3).shape
    torch.Size([2, 1, 28, 28])
    """
    vm = as_vision_model(model)
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise TypeError(f"unit must be an int (a channel of {layer!r}), got {unit!r}")
    units = torch.full((x.shape[0],), unit, dtype=torch.int64)
    positions = None if position is None else torch.tensor([position] * x.shape[0], dtype=torch.int64)
    return project_units(vm, x, layer, units, positions, rule, check=(unit, position))


def project_units(
    vm: VisionModel,
    x: torch.Tensor,
    layer: str,
    units: torch.Tensor,
    positions: torch.Tensor | None,
    rule: str,
    check: tuple | None = None,
) -> torch.Tensor:
    """One unit per image (``units [B]``), at ``positions [B,2]`` or at each image's maximum."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        raise ValueError(
            f"x must be a float batch of model inputs [B,C,H,W], got {getattr(x, 'shape', type(x))}"
        )
    inputs = x.detach().clone().requires_grad_(True)
    with torch.enable_grad(), layer_runner(vm, [layer], detach=False) as run, rectifier_rules(rule):
        activation = run(inputs).activations[layer]
        shape = tuple(activation.shape[1:])
        if check is not None:
            check_unit(layer, shape, *check)
        rows = torch.arange(x.shape[0], device=activation.device)
        units = units.to(activation.device)
        seed = torch.zeros_like(activation)
        if activation.ndim == 2:
            seed[rows, units] = activation.detach()[rows, units]
        elif activation.ndim == 4:
            if positions is None:
                flat = activation.detach()[rows, units].flatten(1).argmax(1)
                ys, xs = flat // activation.shape[3], flat % activation.shape[3]
            else:
                positions = positions.to(activation.device)
                ys, xs = positions[:, 0], positions[:, 1]
            seed[rows, units, ys, xs] = activation.detach()[rows, units, ys, xs]
        else:
            raise ValueError(
                f"project reads [B,units] or [B,C,H,W] layers; {layer!r} gives {list(activation.shape)}"
            )
        (signal,) = torch.autograd.grad(activation, inputs, grad_outputs=seed)
    return signal.detach()
