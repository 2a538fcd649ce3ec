"""``explain()``: several heat-map methods on one batch, sharing passes through the model.

Methods that read the same forward and backward (saliency, input x gradient, CAM, Grad-CAM, Grad-CAM++,
Layer-CAM: ``shares_pass`` in their class) run on ONE forward and ONE backward per sub-batch: the backward
goes to the input when a pixel-space method is among them, and yields the layer's gradient on the way.
Every other method runs on its own; all layer-space methods share one probe of the model (the default
layer is found once).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deepscope.attribution.base import (
    Attribution,
    MethodError,
    PassCount,
    check_inputs,
    check_options,
    method_info,
    method_names,
)
from deepscope.attribution.passes import SharedContext, SharedPassMethod, run_shared
from deepscope.attribution.targets import TargetLike
from deepscope.zoo.vision_model import VisionModel, as_vision_model


class Explanation(dict):
    """Method name -> map (a ``dict``), with what it cost and which layers it used.

    ``passes``: total passes through the model (units of the whole batch); ``method_passes``: each method's
    own cost (the shared pass counted once, under ``shared``; the one-sample probe that finds layers and
    heads under ``probe``); ``shared``: the methods that shared one forward and backward; ``layers``: the
    layer each layer-space method used (defaults resolved).
    """

    def __init__(self, maps: dict[str, torch.Tensor]):
        super().__init__(maps)
        self.passes = PassCount()
        self.method_passes: dict[str, PassCount] = {}
        self.shared: list[str] = []
        self.layers: dict[str, str] = {}

    def summary(self) -> str:
        """One line per pass group: which methods ran on which passes."""
        lines = []
        if self.shared:
            lines.append(f"shared: {', '.join(self.shared)}: {self.method_passes['shared']}")
        lines += [f"{name}: {count}" for name, count in self.method_passes.items() if name != "shared"]
        lines.append(f"total: {self.passes}")
        return "\n".join(lines)


def explain(
    model: VisionModel | nn.Module,
    inputs: torch.Tensor,
    methods: str | Sequence[str],
    target: TargetLike = None,
    layer: str | None = None,
    batch_size: int | None = None,
    **options: dict[str, Any],
) -> Explanation:
    """Heat maps of several methods for one batch, ``{name: map}``, sharing passes where they can.

    ``methods``: names (or 'a,b,c'); ``target``/``layer``/``batch_size`` as in :func:`ds.attribute`, for all
    methods; per-method settings as keyword arguments named after the method, e.g.
    ``integrated_gradients={"steps": 32}``. The result's ``.passes`` says how many passes ran.

    >>> import torch, deepscope as ds
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    >>> maps = ds.explain(net, torch.rand(2, 3, 16, 16), ["saliency", "grad_cam", "cam"])
    >>> sorted(maps), maps.layers
    (['cam', 'grad_cam', 'saliency'], {'grad_cam': '1', 'cam': '1'})
    >>> str(maps.method_passes["shared"]), str(maps.passes)  # + a one-sample probe for the layer and head
    ('1 forward + 1 backward', '1.5 forward + 1 backward')
    """
    vm = as_vision_model(model)
    names = method_names(methods)
    if len(set(names)) != len(names):
        raise MethodError(f"a method is listed twice in {names}")
    unknown = [key for key in options if key not in names]
    if unknown:
        raise MethodError(f"settings given for {', '.join(unknown)}, which is not among the methods {names}")
    inputs = check_inputs(inputs).to(vm.device)
    context = SharedContext(vm, inputs, layer)
    instances: dict[str, Attribution] = {}
    for name in names:
        info = method_info(name)
        settings = options.get(name, {})
        if not isinstance(settings, dict):
            raise MethodError(f"settings for {name} must be a dict, got {type(settings).__name__}")
        check_options(info.method, settings)
        instances[name] = info.method(
            vm, layer=layer if info.needs_layer else None, batch_size=batch_size, **settings
        )
        if isinstance(instances[name], SharedPassMethod):
            instances[name].context = context
    shared = [n for n, m in instances.items() if isinstance(m, SharedPassMethod) and m.shares_pass]
    maps: dict[str, torch.Tensor] = {}
    if shared:
        for name, result in zip(
            shared,
            run_shared([instances[n] for n in shared], inputs, target, batch_size, context),
            strict=True,
        ):
            maps[name] = result
    for name, method in instances.items():
        if name not in shared:
            maps[name] = method.attribute(inputs, target)
    explanation = Explanation({name: maps[name] for name in names})
    if shared:
        explanation.shared = shared
        explanation.method_passes["shared"] = instances[shared[0]].passes
        explanation.passes = explanation.passes + instances[shared[0]].passes
    if context.passes.forward:
        explanation.method_passes["probe"] = context.passes
        explanation.passes = explanation.passes + context.passes
    for name, method in instances.items():
        if name not in shared:
            explanation.method_passes[name] = method.passes
            explanation.passes = explanation.passes + method.passes
        if method_info(name).needs_layer and getattr(method, "layer", None):
            explanation.layers[name] = method.layer
    return explanation
