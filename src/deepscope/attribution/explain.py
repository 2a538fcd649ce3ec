"""``explain()``: several heat-map methods on one batch, sharing passes through the model.

Methods that read the same forward and backward (saliency, input x gradient, CAM, Grad-CAM, Grad-CAM++,
Layer-CAM: ``shares_pass`` in their class) run on ONE forward and ONE backward per sub-batch: the backward
goes to the input when a pixel-space method is among them, and yields the layer's gradient on the way.
Every other method runs on its own; all layer-space methods share one probe of the model (the default
layer is found once).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from deepscope.attribution.base import (
    Attribution,
    Method,
    MethodError,
    PassCount,
    as_methods,
    finite_maps,
    with_call_settings,
)
from deepscope.attribution.passes import SharedContext, SharedPassMethod, run_shared
from deepscope.attribution.targets import TargetLike
from deepscope.zoo.state import evaluation_mode
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
    methods: str | Method | Sequence[str | Method],
    target: TargetLike = None,
    layer: str | None = None,
    batch_size: int | None = None,
) -> Explanation:
    """Heat maps of several methods for one batch, ``{name: map}``, sharing passes where they can.

    ``methods``: names ('a,b,c' or a list) and/or ``ds.method(name, **options)`` specs, each method once.
    ``target`` as in :func:`ds.attribute`, for all methods; ``layer`` for the layer-space methods and
    ``batch_size`` for all, where a spec does not set its own. The model runs in eval mode for the call. The
    result's ``.passes`` says how many passes ran.

    >>> import torch, deepscope as ds
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5))
    >>> maps = ds.explain(net, torch.rand(2, 3, 16, 16), ["saliency", "grad_cam", ds.method("cam", relu=True)])
    >>> sorted(maps), maps.layers
    (['cam', 'grad_cam', 'saliency'], {'grad_cam': '1', 'cam': '1'})
    >>> str(maps.method_passes["shared"]), str(maps.passes)  # + a one-sample probe for the layer and head
    ('1 forward + 1 backward', '1.5 forward + 1 backward')
    """
    vm = as_vision_model(model)
    specs = [with_call_settings(spec, layer, batch_size, every_method=False) for spec in as_methods(methods)]
    names = [spec.name for spec in specs]
    if len(set(names)) != len(names):
        raise MethodError(f"a method is listed twice in {names}")
    inputs = vm.check_inputs(inputs).to(vm.device)
    instances: dict[str, Attribution] = {spec.name: spec.build(vm) for spec in specs}
    with evaluation_mode(vm.module):
        return _explain(vm, inputs, instances, target)


def _explain(
    vm: VisionModel,
    inputs: torch.Tensor,
    instances: dict[str, Attribution],
    target: TargetLike,
) -> Explanation:
    context = SharedContext(vm, inputs)
    for method in instances.values():
        if isinstance(method, SharedPassMethod):
            method.context = context
    shared = [n for n, m in instances.items() if isinstance(m, SharedPassMethod) and m.shares_pass]
    maps: dict[str, torch.Tensor] = {}
    if shared:
        # one chunk size for the shared pass: the smallest that a method asks for bounds them all
        sizes = [instances[n].batch_size for n in shared if instances[n].batch_size is not None]
        for name, result in zip(
            shared,
            run_shared([instances[n] for n in shared], inputs, target, min(sizes, default=None), context),
            strict=True,
        ):
            maps[name] = finite_maps(result, name)
    for name, method in instances.items():
        if name not in shared:
            maps[name] = method.attribute(inputs, target if method.uses_target else None)
    explanation = Explanation({name: maps[name] for name in instances})
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
        if method.needs_layer and method.layer:
            explanation.layers[name] = method.layer
    return explanation
