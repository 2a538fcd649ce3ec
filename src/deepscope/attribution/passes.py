"""One forward and one backward shared by every method that needs them (the cost floor of DESIGN.md).

A method that can consume a shared pass says what it needs (:class:`Needs`: the input gradient, layers'
activations, layers' gradients) and implements one narrow step, ``from_pass(pass_) -> map``. :func:`run_shared`
runs the union of the needs of several methods as one forward and one backward per sub-batch, then hands the
same :class:`Pass` to each method. Gradients are taken with ``torch.autograd.grad`` with respect to exactly
what is needed: a CAM's backward stops at its layer, and parameters never get ``.grad``.

The perturbation methods (occlusion, RISE, prediction difference, Score-CAM's masking) share one engine,
:func:`perturb`: a method says which perturbed inputs to build and how to weigh their scores into maps
(:class:`Perturbations`), the engine runs them through the model ``batch_size`` at a time under
``torch.inference_mode()``, one forward each, no backward.

Every function here expects the model in eval mode already: ``Attribution.attribute`` and ``ds.explain`` hold
it there for the whole call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from deepscope.attribution.base import (
    Attribution,
    MethodError,
    PassCount,
    chunk_size,
    chunks,
    target_rows,
    target_scores,
)
from deepscope.attribution.layers import Tap, default_layer, probe, taps
from deepscope.attribution.targets import Classes, TargetLike
from deepscope.probe.inference import forward_only
from deepscope.probe.layers import parse_layer
from deepscope.zoo.vision_model import VisionModel


@dataclass
class Needs:
    """What a method reads from a shared pass."""

    input_gradient: bool = False
    layers: set[str] = field(default_factory=set)  # layer names whose activations are read
    layer_gradients: set[str] = field(default_factory=set)  # layer names whose gradients are read


@dataclass
class Pass:
    """One forward (and backward) over a sub-batch ``rows`` of the batch.

    ``activations`` and ``gradients`` are per layer name, as ``[b,C,h,w]`` maps (token grids reshaped),
    detached. ``target`` is the resolved target (e.g. :class:`~deepscope.attribution.targets.Classes`).
    """

    inputs: torch.Tensor
    rows: torch.Tensor
    output: Any
    target: Any
    scores: torch.Tensor
    input_gradient: torch.Tensor | None = None
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)
    backwards: int = 0  # autograd.grad calls made (2 when layer and input gradients use different rules)

    @property
    def input_size(self) -> tuple[int, int]:
        return (int(self.inputs.shape[-2]), int(self.inputs.shape[-1]))


class SharedPassMethod(Attribution):
    """A method that consumes one forward/backward: it states :meth:`needs` and implements the narrow step
    :meth:`from_pass`. Its own :meth:`compute` is :func:`run_shared` with itself alone; ``ds.explain``
    runs all methods with ``shares_pass = True`` on one pass (methods that change the backward, like guided
    backprop, set it False)."""

    shares_pass: ClassVar[bool] = True
    # Set by ds.explain so that methods of one call share the probe and the default layer.
    context: SharedContext | None = None

    def needs(self) -> Needs:
        raise NotImplementedError

    def from_pass(self, pass_: Pass) -> torch.Tensor:
        raise NotImplementedError

    def prepare(self, inputs: torch.Tensor, context: SharedContext) -> None:
        """Resolve what depends on the model and input size (the default layer) before the pass."""

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        return run_shared([self], inputs, target, self.batch_size, self.context)[0]


class SharedContext:
    """Per-call facts that several methods share, computed once: the probe and the default layer."""

    def __init__(self, vm: VisionModel, inputs: torch.Tensor):
        self.vm = vm
        self.example = inputs[:1]
        self.batch = inputs.shape[0]
        self.passes = PassCount()  # what probing cost (one sample of the batch)
        self._probe = None
        self._default: str | None = None

    def probe(self, keep: set[str] | None = None):
        if self._probe is None or (keep and not keep <= set(self._probe.activations)):
            self._probe = probe(self.vm, self.example, keep)
            self.passes.add(1, self.batch, backward=False)
        return self._probe

    def default_layer(self) -> str:
        if self._default is None:
            gradient_probe = PassCount()  # in samples: the example is one sample
            self._default = default_layer(self.vm, self.example, self.probe(), gradient_probe)
            if gradient_probe.forward:
                self.passes.add(1, self.batch, backward=True)
        return self._default


def run_shared(
    methods: Sequence[SharedPassMethod],
    inputs: torch.Tensor,
    target: TargetLike = None,
    batch_size: int | None = None,
    context: SharedContext | None = None,
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    between_backwards: Callable[[], None] | None = None,
) -> list[torch.Tensor]:
    """Run ``methods`` on one forward and one backward per sub-batch of ``batch_size`` (all at once by
    default; capped on the CPU by :func:`~deepscope.attribution.base.chunk_size`) and return each method's
    maps, in order. Each method's ``passes`` records the shared cost.
    ``forward_context`` is entered around each forward (guided backpropagation modifies ReLUs there);
    ``between_backwards``, when given, splits the backward in two: layer gradients first, then the callback,
    then the input gradient (guided Grad-CAM: a plain backward to the layer, a guided one to the input)."""
    if not methods:
        return []
    vm = methods[0].vm
    if any(method.vm.module is not vm.module for method in methods):
        raise MethodError("methods sharing a pass must explain the same model")
    inputs = inputs.to(vm.device)
    own_context = context is None
    context = context or SharedContext(vm, inputs)
    for method in methods:
        method.passes = PassCount()
        method.prepare(inputs, context)
    needs = [method.needs() for method in methods]
    input_gradient = any(n.input_gradient for n in needs)
    layer_names = set().union(*(n.layers for n in needs))
    gradient_layers = set().union(*(n.layer_gradients for n in needs))
    layers = {name: parse_layer(vm, name) for name in layer_names | gradient_layers}

    batch = inputs.shape[0]
    size = chunk_size(batch_size or batch, inputs)
    results: list[list[torch.Tensor]] = [[] for _ in methods]
    input_size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
    with taps(vm, layers, input_size) as tapped:
        for rows in chunks(batch, size, inputs.device):
            pass_ = forward_backward(
                vm,
                inputs[rows],
                rows,
                target,
                batch,
                input_gradient,
                tapped,
                gradient_layers,
                forward_context,
                between_backwards,
            )
            for method, collected in zip(methods, results, strict=True):
                collected.append(method.from_pass(pass_))
            for method in methods:
                method.passes.add(len(rows), batch, pass_.backwards)
    if own_context:
        for method in methods:
            method.passes = method.passes + context.passes
    return [torch.cat(collected) for collected in results]


def forward_backward(
    vm: VisionModel,
    chunk: torch.Tensor,
    rows: torch.Tensor,
    target: TargetLike,
    batch: int,
    input_gradient: bool = True,
    tapped: dict[str, Tap] | None = None,
    gradient_layers: set[str] | frozenset[str] = frozenset(),
    forward_context: Callable[[], AbstractContextManager] = nullcontext,
    between_backwards: Callable[[], None] | None = None,
) -> Pass:
    """One forward of ``chunk`` (rows ``rows`` of a batch of ``batch``) and one backward of the target
    scores to the input (``input_gradient``) and to the tapped ``gradient_layers``: the only place where
    deepscope runs a model forward for a gradient."""
    tapped = tapped or {}
    x = chunk.detach().requires_grad_(input_gradient)

    def forward(inputs: torch.Tensor) -> Any:
        for tap in tapped.values():
            tap.reset()
        with forward_context():
            return vm.module(inputs)

    backward = input_gradient or bool(gradient_layers)
    # no_grad rather than inference_mode when nothing is differentiated: tapped outputs keep their version
    # counters, so a later in-place change to them is caught.
    with torch.enable_grad() if backward else torch.no_grad():
        output = vm.in_fast_layout(forward, x)
        scores, resolved = target_scores(target_rows(target, rows, batch), output, rows)
        for tap in tapped.values():
            tap.check(vm, chunk)
        pass_ = Pass(chunk, rows, _detach(output), resolved, scores.detach())
        names = sorted(gradient_layers)
        wrt = ([x] if input_gradient else []) + [tapped[name].raw for name in names]
        if wrt:
            if not scores.requires_grad:
                raise MethodError(
                    f"the target score of {vm.name} does not depend on its input through autograd (does the "
                    "model detach its output or run under torch.no_grad()?)"
                )
            two_phases = between_backwards is not None and input_gradient and names
            if two_phases:
                grads = torch.autograd.grad(scores.sum(), wrt[1:], retain_graph=True, allow_unused=True)
                between_backwards()
                grads = torch.autograd.grad(scores.sum(), [x]) + grads
            else:
                grads = torch.autograd.grad(scores.sum(), wrt, allow_unused=True)
            pass_.backwards = 2 if two_phases else 1
            if input_gradient:
                pass_.input_gradient = _required(grads[0], "the input", vm).detach().contiguous()
                grads = grads[1:]
            for name, grad in zip(names, grads, strict=True):
                pass_.gradients[name] = tapped[name].as_map(_required(grad, f"layer {name!r}", vm).detach())
    for name, tap in tapped.items():
        pass_.activations[name] = tap.as_map(tap.raw.detach())
    return pass_


def _required(grad: torch.Tensor | None, what: str, vm: VisionModel) -> torch.Tensor:
    if grad is None:
        raise MethodError(f"the target score of {vm.name} does not depend on {what}")
    return grad


def _detach(output: Any) -> Any:
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, (list, tuple)):
        return type(output)(_detach(item) for item in output)
    if isinstance(output, dict):
        return {key: _detach(value) for key, value in output.items()}
    return output


def fixed_target(
    vm: VisionModel, inputs: torch.Tensor, target: TargetLike, batch_size: int, passes: PassCount
) -> TargetLike:
    """``target`` made independent of the model inputs a method builds from ``inputs`` (noisy copies, path
    points, occluded images): ``None`` becomes each sample's top-1 class on the clean input (one forward
    without gradients, counted in ``passes``); other targets are returned as they are."""
    if target is not None:
        return target
    return clean_scores(vm, inputs, None, batch_size, passes).target


@dataclass
class CleanPass:
    """What the forward of the unperturbed inputs gave: their target ``scores`` ``[B]``, the ``target``
    fixed for the perturbed inputs (``None`` resolved to the top-1 classes) and the number of ``classes`` of a
    ``[B, classes]`` output (None for other outputs)."""

    scores: torch.Tensor
    target: TargetLike
    classes: int | None


def clean_scores(
    vm: VisionModel,
    inputs: torch.Tensor,
    target: TargetLike,
    batch_size: int,
    passes: PassCount,
    softmax: bool = False,
) -> CleanPass:
    """The target scores of the unperturbed inputs (softmax probabilities with ``softmax``) and the target
    fixed for perturbed ones, from one forward under ``torch.inference_mode()``, ``batch_size`` at a time."""
    batch = inputs.shape[0]
    scores: list[torch.Tensor] = []
    found: list[torch.Tensor] = []
    classes = None
    with torch.inference_mode():
        for rows in chunks(batch, batch_size, inputs.device):
            output = forward_only(vm, inputs[rows])
            chunk_scores, resolved = target_scores(
                target_rows(target, rows, batch), _scored(output, softmax), rows
            )
            scores.append(chunk_scores)
            if isinstance(resolved, Classes):
                found.append(resolved.indices)
            if isinstance(output, torch.Tensor) and output.ndim == 2:
                classes = output.shape[1]
            passes.add(len(rows), batch, backward=False)
    fixed = target if target is not None else Classes(torch.cat(found).cpu())
    return CleanPass(torch.cat(scores), fixed, classes)


class Perturbations:
    """The perturbed inputs of one call and how their scores make the maps: the step each perturbation method
    defines (occlusion's windows, RISE's masks, prediction difference's sampled windows, Score-CAM's channel
    masks), run by :func:`perturb`.

    The ``count`` perturbed inputs are numbered ``0 .. count-1``. :meth:`build` makes those numbered
    ``points`` and says which sample of the batch each one perturbs; :meth:`weigh` sees their scores as they
    come (for maps that accumulate, so that nothing per perturbed input is kept; it runs in inference mode, so
    what it accumulates into is made beforehand, in ``__init__``); :meth:`maps` turns all the scores, in order,
    into the maps.
    """

    def __init__(self, inputs: torch.Tensor, count: int):
        self.inputs = inputs
        self.batch = inputs.shape[0]
        self.count = count

    def build(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(perturbed inputs [len(points), C, H, W], rows [len(points)])``."""
        raise NotImplementedError

    def weigh(self, points: torch.Tensor, rows: torch.Tensor, scores: torch.Tensor) -> None:
        """Take the scores of the inputs numbered ``points`` (nothing by default: :meth:`maps` reads them)."""

    def maps(self, scores: torch.Tensor) -> torch.Tensor:
        """The maps from the scores ``[count]`` of all perturbed inputs."""
        raise NotImplementedError


def perturb(
    vm: VisionModel,
    perturbations: Perturbations,
    target: TargetLike,
    batch_size: int,
    passes: PassCount,
    softmax: bool = False,
) -> torch.Tensor:
    """The maps of ``perturbations``: each perturbed input built on the fly, ``batch_size`` at a time, and
    scored for ``target`` (fixed beforehand, e.g. by :func:`clean_scores`; softmax probabilities with
    ``softmax``) from one forward under ``torch.inference_mode()``, counted in ``passes``."""
    batch = perturbations.batch
    scores: list[torch.Tensor] = []
    with torch.inference_mode():
        for points in chunks(perturbations.count, batch_size, vm.device):
            inputs, rows = perturbations.build(points)
            output = forward_only(vm, inputs)
            found = target_scores(
                target_rows(target, rows, batch), _scored(output, softmax), rows, perturbed=True
            )[0]
            perturbations.weigh(points, rows, found)
            scores.append(found)
            passes.add(len(points), batch, backward=False)
    # outside inference mode, so that the maps are ordinary tensors the caller may change in place
    return perturbations.maps(torch.cat(scores) if scores else torch.empty(0, device=vm.device))


def _scored(output: Any, softmax: bool) -> Any:
    if not softmax:
        return output
    if not isinstance(output, torch.Tensor) or output.ndim != 2:
        raise MethodError(
            "this method scores class probabilities (a softmax over a [B, classes] output), but the model "
            f"returns {type(output).__name__ if not isinstance(output, torch.Tensor) else list(output.shape)}"
        )
    return output.softmax(1)
