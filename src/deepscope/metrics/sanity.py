"""Sanity checks: does the heat map depend on what the model learned, and on the class it explains?

Model-parameter randomization (Adebayo et al. 2018, cascading and independent) and the random-logit test
(Sixt et al. 2020). Both recompute heat maps, so they take the method: a registry name (``ds.methods()``)
or a callable ``(model, x, target) -> maps``.

The user's model is never touched: layers are randomized in a deep copy.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deepscope.attribution.base import Method
from deepscope.attribution.targets import Classes, TargetLike, resolve_target
from deepscope.metrics._common import (
    DEFAULT_BATCH_SIZE,
    Explainer,
    MetricError,
    ModelRunner,
    check_maps,
    check_seed,
    generator_for,
    make_explainer,
    prepare,
)
from deepscope.metrics.registry import register
from deepscope.metrics.similarity import SIMILARITIES, against
from deepscope.probe.layers import find_layers
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model

Similarity = str | Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Randomization:
    """Result of :func:`randomization`: for each randomization step (``layers[i]``: the layer randomized at that
    step; in cascading order every layer up to it is random too), the similarity of the new heat maps to the
    original ones, per measure: ``similarity[name]`` is ``[B, L]``. Lower similarity = the map depends more on
    the learned parameters = a better pass of the check.
    """

    layers: list[str]
    similarity: dict[str, torch.Tensor]
    order: str
    randomized: list[list[str]] = field(default_factory=list)  # the modules re-initialized at each step
    untouched: list[str] = field(default_factory=list)  # modules with parameters but no reset_parameters()
    maps: list[torch.Tensor] | None = field(default=None, repr=False)

    @property
    def score(self) -> torch.Tensor:
        """``[B]``: the first measure averaged over all randomization steps (lower is better)."""
        return next(iter(self.similarity.values())).nanmean(1)

    def mean(self) -> dict[str, torch.Tensor]:
        """Per measure ``[L]``: the similarity at each step averaged over samples."""
        return {name: values.nanmean(0) for name, values in self.similarity.items()}


def _measures(similarity: Similarity | Sequence[Similarity]) -> dict[str, Callable]:
    listed = [similarity] if isinstance(similarity, str) or callable(similarity) else list(similarity)
    if not listed:
        raise MetricError("no similarity measure given")
    measures = {}
    for entry in listed:
        if callable(entry):
            measures[getattr(entry, "__name__", "similarity")] = entry
        elif entry in SIMILARITIES:
            measures[entry] = SIMILARITIES[entry]
        else:
            raise MetricError(f"unknown similarity {entry!r}; use {', '.join(SIMILARITIES)} or a callable")
    return measures


def _comparison(
    original: torch.Tensor, measures: dict[str, Callable], absolute: bool, normalize: bool
) -> Callable[[torch.Tensor], dict[str, torch.Tensor]]:
    """``maps -> {measure: [B]}``: the similarity of new maps to the original ones, the original's side of each
    measure prepared once."""
    reference = _scaled(original, absolute, normalize)
    prepared = {name: against(reference, measure) for name, measure in measures.items()}

    def compare(maps: torch.Tensor) -> dict[str, torch.Tensor]:
        new = _scaled(maps.to(original.device), absolute, normalize)
        return {name: measure(new).double().cpu() for name, measure in prepared.items()}

    return compare


def _scaled(maps: torch.Tensor, absolute: bool, normalize: bool) -> torch.Tensor:
    if absolute:
        maps = maps.abs()
    return _scale_by_max(maps) if normalize else maps


def _scale_by_max(maps: torch.Tensor) -> torch.Tensor:
    """Each map divided by its largest absolute value (all-zero maps stay zero)."""
    extent = maps.flatten(1).abs().amax(1).clamp_min(torch.finfo(maps.dtype).tiny)
    return maps / extent.view(-1, *[1] * (maps.ndim - 1))


def _fixed_target(runner: ModelRunner, x: torch.Tensor, target: TargetLike) -> Any:
    """The target resolved once on the original model: the randomized models explain the same classes."""
    return runner.resolve(x, target)


def _resettable(module: nn.Module) -> bool:
    return hasattr(module, "reset_parameters") and any(True for _ in module.parameters(recurse=False))


def randomizable_layers(module: nn.Module) -> list[str]:
    """Names of the modules that have parameters of their own and a ``reset_parameters`` method, in model
    order (convolutions, linear and normalization layers): the default randomization steps.

    >>> import deepscope as ds
    >>> ds.metrics.randomizable_layers(ds.load_model("zoo:lenet_mnist").module)
    ['conv1', 'conv2', 'fc1', 'fc2', 'fc3']
    """
    return [name for name, sub in module.named_modules() if name and _resettable(sub)]


def _randomize(modules: Sequence[nn.Module], seed: int) -> None:
    """Re-initialize ``modules`` (in this order) with PyTorch's default initializers (``reset_parameters``;
    batch-norm running statistics reset too), drawing from a forked RNG seeded with ``seed`` (the global RNG is
    left as it was)."""
    devices = sorted(
        {p.device.index or 0 for m in modules for p in m.parameters() if p.device.type == "cuda"}
    )
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        torch.manual_seed(seed)
        for module in modules:
            module.reset_parameters()
            if isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats:
                module.reset_running_stats()


def _steps(module: nn.Module, steps: list[str], order: str) -> tuple[list[str], list[list[str]], list[str]]:
    """For each step (top-down for the cascade), the modules to re-initialize then; and the modules with
    parameters that no step re-initializes because they have no ``reset_parameters``."""
    modules = dict(module.named_modules())
    position = {name: index for index, name in enumerate(modules)}
    resettable = [name for name in modules if name and _resettable(modules[name])]
    if order == "cascading":
        # Step k randomizes its layer and everything after it in model order that is not random yet: a true
        # cascade from the output down, whichever layers are named as steps.
        steps = sorted(steps, key=lambda name: position[name], reverse=True)
        done: set[str] = set()
        plan = []
        for step in steps:
            start = position[step]
            new = [name for name in resettable if position[name] >= start and name not in done]
            done.update(new)
            plan.append(new)
    else:
        plan = [
            [name for name in resettable if name == step or name.startswith(step + ".")] for step in steps
        ]
    if any(not names for names in plan):
        empty = [step for step, names in zip(steps, plan, strict=True) if not names]
        raise MetricError(
            f"nothing to randomize in {', '.join(empty)}: no parameters with reset_parameters()"
        )

    def in_scope(name: str) -> bool:
        if order == "cascading":
            return position[name] >= position[steps[-1]]
        return any(name == step or name.startswith(step + ".") for step in steps)

    untouched = [
        name
        for name, sub in modules.items()
        if name
        and in_scope(name)
        and any(True for _ in sub.parameters(recurse=False))
        and not _resettable(sub)
    ]
    return steps, plan, untouched


@register(
    "randomization",
    family="sanity",
    score="Spearman to the trained maps, mean over layers",
    per_sample="score",
    higher_is_better=False,
    reference="Adebayo et al. 2018, Sanity Checks for Saliency Maps (cascading and independent)",
    needs_method=True,
)
def randomization(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    method: str | Method | Explainer,
    order: str = "cascading",
    layers: str | Sequence[str] | None = None,
    similarity: Similarity | Sequence[Similarity] = ("spearman", "ssim"),
    absolute: bool = True,
    normalize: bool = True,
    seed: int = 0,
    keep_maps: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> Randomization:
    """Model-parameter randomization test (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

    Re-initializes layers of a deep copy of the model and compares the heat maps of ``method`` for the same
    inputs and classes with ``attributions`` (the original maps). ``order='cascading'`` randomizes from the
    output down, one more layer per step (top-down, as Adebayo et al.); ``'independent'`` one layer at a time,
    the rest left trained. ``layers``: names or globs of the steps; default every module with its own
    parameters and a ``reset_parameters`` method. A cascading step randomizes its layer and every layer after
    it in model order that is not random yet (so naming a few blocks gives a coarser but true cascade); an
    independent step randomizes the named module and everything inside it. Modules are re-initialized with
    their own ``reset_parameters`` (PyTorch's default initialization), from a forked RNG seeded with ``seed``;
    modules with parameters but no such method are left trained and listed in ``.untouched``.

    ``similarity``: 'spearman' (rank correlation), 'ssim' (2-D structural similarity), 'pearson', callables
    ``(a, b) -> [B]``, or several; ``absolute`` compares absolute values (Adebayo et al.'s main figures),
    ``normalize`` divides each map by its largest absolute value first (matters for SSIM only).
    A method passes when the similarity falls towards 0 as layers are randomized.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:4])
    >>> def gradient(model, inputs, target):
    ...     inputs = inputs.clone().requires_grad_()
    ...     (grad,) = torch.autograd.grad(target(model(inputs)).sum(), inputs)
    ...     return grad
    >>> target = ds.metrics.fixed_target(vm, x)
    >>> result = ds.metrics.randomization(vm, x, gradient(vm, x, target), target, method=gradient)
    >>> result.layers
    ['fc3', 'fc2', 'fc1', 'conv2', 'conv1']
    >>> result.similarity["spearman"].shape
    torch.Size([4, 5])
    """
    x, original = prepare(model, x, attributions)
    if order not in ("cascading", "independent"):
        raise MetricError(f"order must be 'cascading' or 'independent', got {order!r}")
    check_seed(seed)
    vm = as_vision_model(model)
    explain = make_explainer(method, batch_size)
    measures = _measures(similarity)
    names = randomizable_layers(vm.module) if layers is None else find_layers(vm, layers)
    if not names:
        raise MetricError(f"{vm.name} has no layer with parameters to randomize")
    names, plan, untouched = _steps(vm.module, names, order)
    fixed = _fixed_target(ModelRunner(vm, batch_size, softmax=False), x, target)
    copy_vm = vm.with_module(copy.deepcopy(vm.module))
    for parameter in copy_vm.module.parameters():
        parameter.grad = None
    copies = dict(copy_vm.module.named_modules())
    trained = copy.deepcopy(copy_vm.module.state_dict()) if order == "independent" else None
    scores: dict[str, list[torch.Tensor]] = {name: [] for name in measures}
    kept = []
    compare = _comparison(original, measures, absolute, normalize)
    # The copy keeps the user's train/eval flags; its explanations run in eval mode, as every metric's forwards.
    with evaluation_mode(copy_vm.module):
        for modules in plan:
            if trained is not None:
                copy_vm.module.load_state_dict(trained)
            _randomize([copies[name] for name in modules], seed)
            maps = check_maps(x, explain(copy_vm, x, fixed)).detach()
            if keep_maps:
                kept.append(maps)
            for measure, values in compare(maps).items():
                scores[measure].append(values)
    return Randomization(
        layers=names,
        similarity={measure: torch.stack(values, 1) for measure, values in scores.items()},
        order=order,
        randomized=plan,
        untouched=untouched,
        maps=kept if keep_maps else None,
    )


def fixed_target(model: VisionModel | nn.Module, x: torch.Tensor, target: TargetLike = None) -> Classes | Any:
    """``target`` resolved once on the model's output for ``x`` (None: each sample's top-1 class), as a
    callable with ``.select(rows)``: what the sanity checks pass to the method for every new model.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> digits = ds.datasets.mnist5k("test").subset([0, 500, 999])
    >>> ds.metrics.fixed_target(vm, vm.preprocess(digits.images)).indices, digits.labels
    (tensor([0, 5, 9]), tensor([0, 5, 9]))
    """
    return _fixed_target(ModelRunner(model, x.shape[0] or 1, softmax=False), x, target)


@register(
    "random_logit",
    family="sanity",
    score="SSIM to another class's map",
    per_sample=None,
    higher_is_better=False,
    reference="Sixt et al. 2020, When Explanations Lie: Why Many Modified BP Attributions Fail",
    needs_method=True,
)
def random_logit(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    method: str | Method | Explainer,
    off_target: Sequence[int] | torch.Tensor | None = None,
    similarity: Similarity = "ssim",
    absolute: bool = False,
    normalize: bool = True,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> torch.Tensor:
    """Random-logit test (Sixt et al. 2020, "When Explanations Lie: Why Many Modified BP Attributions Fail"):
    the similarity ``[B]`` between each map and the map of the same method for a random other class
    (uniform over the other classes, seeded by ``seed``, or ``off_target``). Lower is better: a map that
    looks the same whatever class it explains does not explain the class.

    ``similarity``: 'ssim' (default, as Sixt et al.), 'spearman', 'pearson' or a callable ``(a, b) -> [B]``;
    ``absolute`` / ``normalize`` as in :func:`randomization`.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:4])
    >>> def gradient(model, inputs, target):
    ...     inputs = inputs.clone().requires_grad_()
    ...     (grad,) = torch.autograd.grad(target(model(inputs)).sum(), inputs)
    ...     return grad
    >>> target = ds.metrics.fixed_target(vm, x)
    >>> ds.metrics.random_logit(vm, x, gradient(vm, x, target), target, method=gradient).shape
    torch.Size([4])
    """
    x, original = prepare(model, x, attributions)
    vm = as_vision_model(model)
    explain = make_explainer(method, batch_size)
    (measure,) = _measures(similarity).values()
    runner = ModelRunner(vm, batch_size, softmax=False)
    if isinstance(target, Classes):  # already resolved: one sample's output tells the number of classes
        fixed, outputs = target, runner.outputs(x[:1])
    else:
        outputs = torch.cat([runner.outputs(chunk) for chunk in x.split(batch_size)])
        fixed = resolve_target(target, outputs)
    if not isinstance(fixed, Classes):
        raise MetricError("the random-logit test needs class targets (None, an int or one class per sample)")
    if not isinstance(outputs, torch.Tensor) or outputs.ndim != 2:
        raise MetricError("the random-logit test needs a classifier with a [B, classes] output")
    classes = outputs.shape[1]
    if classes < 2:
        raise MetricError("the random-logit test needs a model with at least 2 classes")
    if off_target is None:
        draw = torch.randint(
            0, classes - 1, (x.shape[0],), generator=generator_for(torch.device("cpu"), seed)
        )
        off = draw + (draw >= fixed.indices.cpu()).long()
    else:
        off = torch.as_tensor(off_target, dtype=torch.long).flatten().cpu()
        if off.numel() != x.shape[0] or bool((off == fixed.indices.cpu()).any()):
            raise MetricError("off_target needs one class per sample, each different from the explained one")
        if bool(((off < 0) | (off >= classes)).any()):
            raise MetricError(f"off_target out of range for a model with {classes} classes")
    with evaluation_mode(vm.module):
        maps = check_maps(x, explain(vm, x, Classes(off)))
    return _comparison(original, {"similarity": measure}, absolute, normalize)(maps)["similarity"]
