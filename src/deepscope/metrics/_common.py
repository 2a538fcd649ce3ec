"""What every metric shares: checking maps, running perturbed inputs through the model in chunks, baselines,
and turning a method name into an explanation function.

Cost model: a perturbation metric costs one forward per perturbed input and nothing else. Perturbed inputs are
built on the fly, ``batch_size`` at a time, on the model's device, and go through the model under
``torch.inference_mode()``; only the target scores are kept. On the CPU a chunk holds at most 8 images of
3 x 224 x 224 (``deepscope.attribution.base.chunk_size``, shared with the heat-map methods): larger chunks outgrow
the caches and cost more per image, while small inputs (28 x 28 digits) still go ``batch_size`` at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from deepscope.attribution.base import Method, as_method, chunk_size
from deepscope.attribution.targets import TargetLike, resolve_target
from deepscope.errors import DeepscopeError, NonFiniteError, SettingTypeError
from deepscope.probe.inference import forward_only
from deepscope.zoo.state import evaluation_mode
from deepscope.zoo.vision_model import VisionModel, as_vision_model, check_inputs


class MetricError(DeepscopeError, ValueError):
    """A metric setting or input that cannot work (wrong map shape, unknown option, missing masks...)."""


Explainer = Callable[[VisionModel, torch.Tensor, Any], torch.Tensor]
"""``(model, inputs, target) -> maps``: how sanity and robustness metrics recompute heat maps."""

ReplacementLike = str | float | torch.Tensor
REPLACEMENTS = ("black", "mean", "uniform", "blur")
DEFAULT_BATCH_SIZE = 64


def check_count(name: str, value: int) -> int:
    """A setting that counts something (``batch_size``, ``per_step``, ``samples``...): a positive int."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingTypeError(f"{name} must be a positive int, got {value!r}")
    if value < 1:
        raise MetricError(f"{name} must be a positive int, got {value!r}")
    return value


def check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise SettingTypeError(f"seed must be an int, got {seed!r}")
    return seed


def check_maps(x: torch.Tensor, attributions: torch.Tensor) -> torch.Tensor:
    """Attributions as ``[B,k,H,W]`` with k = 1 (one value per pixel) or k = C (one per input feature), detached,
    on the inputs' device. ``[B,H,W]`` counts as one value per pixel."""
    if not isinstance(attributions, torch.Tensor):
        raise SettingTypeError(f"attributions must be a tensor, got {type(attributions).__name__}")
    maps = attributions.detach()
    if maps.ndim == 3:
        maps = maps[:, None]
    batch, channels, height, width = x.shape
    if maps.ndim != 4 or maps.shape[0] != batch:
        raise MetricError(
            f"attributions of shape {list(attributions.shape)} do not fit inputs of shape {list(x.shape)}: "
            "expected [B,C,H,W], [B,1,H,W] or [B,H,W] with the same B"
        )
    if maps.shape[-2:] != x.shape[-2:]:
        raise MetricError(
            f"attributions are {tuple(maps.shape[-2:])} but the inputs are {(height, width)}; "
            "upsample the maps to the input size first (layer methods do unless upsample=False)"
        )
    if maps.shape[1] not in (1, channels):
        raise MetricError(
            f"attributions have {maps.shape[1]} channels; expected 1 or {channels} (as the inputs)"
        )
    if not maps.is_floating_point():
        maps = maps.float()
    return maps.to(x.device)


def pixel_maps(maps: torch.Tensor) -> torch.Tensor:
    """``[B,1,H,W]`` per-pixel relevance: channel maps are summed over channels (Bach et al. 2015)."""
    return maps if maps.shape[1] == 1 else maps.sum(1, keepdim=True)


class ModelRunner:
    """Runs the user's model without side effects: eval mode inside the call (restored afterwards, so that
    batch-norm statistics are not updated and dropout does not add noise), no autograd, chunks of
    ``batch_size``; returns target scores (logits, or softmax probabilities when ``softmax``)."""

    def __init__(self, model: VisionModel | nn.Module, batch_size: int, softmax: bool):
        self.vm = as_vision_model(model)
        self.module = self.vm.module
        self.batch_size = check_count("batch_size", batch_size)
        self.softmax = softmax
        self.step = self.batch_size  # inputs per forward of perturbed inputs, fitted to them by start/resolve

    def outputs(self, inputs: torch.Tensor) -> Any:
        """The model's output for unperturbed inputs (a forward or two: not worth a forward-only copy)."""
        with torch.inference_mode(), evaluation_mode(self.module):
            return self.vm.in_fast_layout(self.module, inputs)

    def start(
        self, x: torch.Tensor, target: TargetLike
    ) -> tuple[Callable[[Any], torch.Tensor], torch.Tensor]:
        """Resolve ``target`` on the unperturbed batch; return it with the unperturbed scores ``[B]``."""
        self.step = chunk_size(self.batch_size, x)
        outputs = [self.outputs(chunk) for chunk in x.split(self.batch_size)]
        output = torch.cat(outputs) if isinstance(outputs[0], torch.Tensor) else None
        if output is None:
            if len(outputs) > 1:
                raise MetricError("models with non-tensor outputs need batch_size >= the batch")
            output = outputs[0]
        resolved = resolve_target(target, output)
        return resolved, self.score(output, resolved, torch.arange(x.shape[0], device=x.device), x.shape[0])

    def resolve(self, x: torch.Tensor, target: TargetLike) -> Callable[[Any], torch.Tensor]:
        """``target`` as a callable; a forward of ``x`` only where resolving needs the output (None, class
        indices): a callable target (``ds.targets.Classes``...) is used as given, with no forward."""
        if callable(target) and not isinstance(target, torch.Tensor):
            self.step = chunk_size(self.batch_size, x)
            return target
        return self.start(x, target)[0]

    def score(
        self, output: Any, target: Callable[[Any], torch.Tensor], rows: torch.Tensor, batch: int
    ) -> torch.Tensor:
        """Scores of ``output`` for the samples ``rows`` (indices into the user's batch of ``batch``)."""
        if self.softmax:
            if not isinstance(output, torch.Tensor) or output.ndim != 2:
                raise MetricError("softmax=True needs a [B, classes] output; pass softmax=False")
            output = output.float().softmax(1)
        scores = select_target(target, rows, batch)(output).detach().float()
        finite = torch.isfinite(scores)
        if not bool(finite.all()):
            bad = sorted(set(rows[~finite].tolist()))
            raise NonFiniteError(
                f"the model's target score is NaN or infinite for (perturbed copies of) samples "
                f"{', '.join(map(str, bad[:10]))}; the metric would be meaningless"
            )
        return scores

    def scores(
        self,
        build: Callable[[int, int], tuple[torch.Tensor, torch.Tensor]],
        count: int,
        target: Callable[[Any], torch.Tensor],
        batch: int,
        device: torch.device,
    ) -> torch.Tensor:
        """Scores of ``count`` perturbed inputs; ``build(begin, end)`` makes the inputs for items ``begin`` to
        ``end - 1`` and says which sample of the user's batch each one belongs to."""
        scores = torch.empty(count, device=device)
        # the modes are set once for all chunks (entering eval mode walks every submodule)
        with torch.inference_mode(), evaluation_mode(self.module):
            for begin in range(0, count, self.step):
                end = min(begin + self.step, count)
                inputs, rows = build(begin, end)
                output = forward_only(self.vm, inputs)
                scores[begin:end] = self.score(output, target, rows, batch).to(device)
        return scores


def select_target(target: Callable[[Any], torch.Tensor], rows: torch.Tensor, batch: int) -> Callable:
    """The target for a chunk whose samples are ``rows`` of the user's batch."""
    if hasattr(target, "select"):
        return target.select(rows)
    if rows.numel() == batch and torch.equal(rows.cpu(), torch.arange(batch)):
        return target
    raise MetricError(
        "a callable target without .select(rows) can only score the whole batch at once; give it a "
        "select method (see ds.targets.Classes) so that metrics can score sub-batches of perturbed inputs"
    )


def replacement_values(
    vm: VisionModel, x: torch.Tensor, replacement: ReplacementLike, generator: torch.Generator | None
) -> torch.Tensor:
    """``[B,C,H,W]`` values that perturbed features take (in the model's input space).

    - ``"black"``: a black image, i.e. zero pixels passed through the model's normalization;
    - ``"mean"``: each image's per-channel mean;
    - ``"uniform"``: uniform noise in [0, 1] pixel space, normalized like the images (Samek et al. 2017);
    - ``"blur"``: a Gaussian blur of the image (kernel 11, sigma 5, as in Petsiuk et al. 2018);
    - a number: that value in input space; a tensor: a fixed baseline broadcast to the inputs.
    """
    if isinstance(replacement, torch.Tensor):
        try:
            return torch.broadcast_to(replacement.to(x.device, x.dtype), x.shape)
        except RuntimeError:
            raise MetricError(
                f"a baseline of shape {list(replacement.shape)} does not broadcast to the inputs {list(x.shape)}"
            ) from None
    if isinstance(replacement, bool) or not isinstance(replacement, (str, int, float)):
        raise SettingTypeError(
            f"replacement must be one of {REPLACEMENTS}, a number or a tensor; got {replacement!r}"
        )
    if isinstance(replacement, (int, float)):
        return torch.full_like(x, float(replacement))
    if replacement == "black":
        return to_input_space(vm, torch.zeros_like(x))
    if replacement == "mean":
        return x.mean((2, 3), keepdim=True).expand_as(x)
    if replacement == "uniform":
        noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return to_input_space(vm, noise)
    if replacement == "blur":
        return gaussian_blur(x, kernel_size=11, sigma=5.0)
    raise MetricError(f"unknown replacement {replacement!r}; use one of {REPLACEMENTS}, a number or a tensor")


def to_input_space(vm: VisionModel, pixels: torch.Tensor) -> torch.Tensor:
    """Pixel-space [0,1] values -> model input; identity where the model's preprocessing does not describe
    these inputs (a plain module whose channel count differs from its default preprocessing)."""
    if vm.preprocessing.channels != pixels.shape[1]:
        return pixels
    return vm.normalize(pixels)


def gaussian_blur(x: torch.Tensor, kernel_size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders, per channel."""
    half = (kernel_size - 1) / 2
    offsets = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - half
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    channels = x.shape[1]
    pad = kernel_size // 2
    # Reflect padding needs the pad to be smaller than the image; replicate otherwise (tiny images).
    mode = "reflect" if min(x.shape[-2:]) > pad else "replicate"
    out = nn.functional.pad(x, (pad, pad, pad, pad), mode=mode)
    out = nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)


def generator_for(device: torch.device, seed: int, stream: int = 0) -> torch.Generator:
    """A private generator (the global RNG is left alone) for one of a seed's independent draws: ``stream`` 0
    orders units at random, 1 draws replacement noise, so that a metric that does both draws them apart."""
    generator = torch.Generator(device=device)
    generator.manual_seed(check_seed(seed) + stream)
    return generator


def stable_ranks(scores: torch.Tensor, descending: bool) -> torch.Tensor:
    """Position of each element of each row ``[B,N]`` in the sorted order; ties keep index order."""
    order = scores.argsort(dim=1, descending=descending, stable=True)
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return ranks


def ordered_ranks(scores: torch.Tensor, order: str, generator: torch.Generator | None) -> torch.Tensor:
    """Ranks ``[B,N]`` for most-relevant-first ('morf'), least-relevant-first ('lerf') or a random order."""
    if order == "morf":
        return stable_ranks(scores, descending=True)
    if order == "lerf":
        return stable_ranks(scores, descending=False)
    if order == "random":
        noise = torch.rand(scores.shape, generator=generator, device=scores.device)
        return stable_ranks(noise, descending=True)
    raise MetricError(f"order must be 'morf', 'lerf' or 'random', got {order!r}")


def step_counts(units: int, per_step: int | None, steps: int | None = None) -> torch.Tensor:
    """How many units are perturbed after 0, 1, ... steps: ``[0, p, 2p, ..., units]``."""
    if per_step is None:
        per_step = max(1, math.ceil(units / 100))
    check_count("per_step", per_step)
    count = math.ceil(units / per_step)
    if steps is not None:
        count = min(count, steps)
    return torch.clamp(torch.arange(count + 1) * per_step, max=units)


def make_explainer(method: str | Method | Explainer, batch_size: int | None) -> Explainer:
    """How a metric recomputes maps: a registry name (``ds.methods()``), a ``ds.method(name, **options)`` spec
    (its own ``batch_size`` kept, else ``batch_size``), or any callable ``(model, x, target) -> maps``."""
    if isinstance(method, str):
        method = as_method(method)
    if isinstance(method, Method):
        return (
            method
            if method.batch_size is not None or batch_size is None
            else method.replace(batch_size=batch_size)
        )
    if callable(method):

        def explain_in_fast_layout(vm: VisionModel, inputs: torch.Tensor, target: Any) -> torch.Tensor:
            # the inputs in the layout the model runs fastest in, as for the registry's methods; the maps back in
            # the standard one
            maps = vm.in_fast_layout(lambda laid_out: method(vm, laid_out, target), inputs)
            return maps.contiguous() if isinstance(maps, torch.Tensor) else maps

        return explain_in_fast_layout
    raise SettingTypeError(
        f"method must be a registry name, a ds.method(...) spec or a callable (model, x, target) -> maps, got "
        f"{type(method).__name__}"
    )


def explain_chunks(
    explain: Explainer,
    vm: VisionModel,
    inputs: torch.Tensor,
    rows: torch.Tensor,
    target: Callable[[Any], torch.Tensor],
    batch: int,
    batch_size: int,
) -> torch.Tensor:
    """Heat maps of ``inputs`` (samples ``rows`` of the user's batch), ``batch_size`` at a time (fewer for
    large images on the CPU, see :func:`chunk_size`)."""
    maps = []
    step = chunk_size(batch_size, inputs)
    for start in range(0, inputs.shape[0], step):
        part = slice(start, start + step)
        chunk_target = select_target(target, rows[part], batch)
        maps.append(explain(vm, inputs[part], chunk_target).detach())
    return torch.cat(maps)


def prepare(
    model: VisionModel | nn.Module | None, x: Any, attributions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The inputs checked as the model's (shape, channels, finite values) and the maps checked against them."""
    x = check_inputs(x, None if model is None else as_vision_model(model))
    return x, check_maps(x, attributions)
