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

The rectifier rules are those of the ``guided_backprop`` and ``deconvnet`` heat maps
(:func:`deepscope.attribution.gradient.modified_relus`): ``torch.relu`` / ``F.relu`` / ``nn.ReLU``,
``F.relu6`` / ``nn.ReLU6`` and ``F.hardtanh(x, 0, upper)`` calls, functional, module or in place. Other operations
(batch norm, other nonlinearities) pass their gradient. The result is the signal at the model input,
``[B,C,H,W]``.
"""

from __future__ import annotations

import torch
from torch import nn

from deepscope.attribution.gradient import ReluRule, modified_relus
from deepscope.errors import SettingError, UnitError
from deepscope.units._forward import check_unit, layer_runner
from deepscope.zoo.vision_model import VisionModel, as_vision_model

RULES = ("deconvnet", "guided")


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
        raise SettingError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    if isinstance(unit, bool) or not isinstance(unit, int):
        raise UnitError(f"unit must be an int (a channel of {layer!r}), got {unit!r}")
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
    x = vm.check_inputs(x)
    inputs = x.detach().clone().requires_grad_(True)
    state = ReluRule(rule)
    with torch.enable_grad(), layer_runner(vm, [layer], detach=False) as run, modified_relus(state):
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
            raise UnitError(
                f"project reads [B,units] or [B,C,H,W] layers; {layer!r} gives {list(activation.shape)}"
            )
        (signal,) = torch.autograd.grad(activation, inputs, grad_outputs=seed)
    return signal.detach()
