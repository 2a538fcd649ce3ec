"""Faithfulness: does removing what the heat map calls relevant change the model's output the most?

Pixel flipping (Bach et al. 2015), region perturbation with AOPC (Samek et al. 2017), deletion and insertion
(Petsiuk et al. 2018), and infidelity (Yeh et al. 2019).

All curve metrics share one scheme: the map ranks *units* (pixels for a ``[B,1,H,W]`` map, which perturbs all
channels of a pixel at once; single input features for a ``[B,C,H,W]`` map; grid regions for region
perturbation), and after ``k`` steps the first ``counts[k]`` units in that order hold the replacement values
(deletion) or the image values (insertion). Every perturbed input is built directly from its mask, so the
``B x steps`` inputs go through the model in chunks of ``batch_size``, with no sequential loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from deepscope.attribution.targets import TargetLike
from deepscope.metrics._common import (
    DEFAULT_BATCH_SIZE,
    MetricError,
    ModelRunner,
    ReplacementLike,
    check_count,
    generator_for,
    ordered_ranks,
    prepare,
    replacement_values,
    step_counts,
)
from deepscope.metrics.registry import register
from deepscope.zoo.vision_model import VisionModel


@dataclass(frozen=True)
class Curve:
    """A perturbation curve: the target score after 0, 1, ..., S perturbation steps.

    ``curve`` ``[B, S+1]`` (column 0 is the input before any step), ``fractions`` ``[S+1]`` the share of units
    perturbed (or inserted) after each step, ``order`` the ranking used.
    """

    curve: torch.Tensor
    fractions: torch.Tensor
    order: str

    @property
    def drop(self) -> torch.Tensor:
        """``[B, S+1]``: score before any step minus score after each step."""
        return self.curve[:, :1] - self.curve

    @property
    def aopc(self) -> torch.Tensor:
        """``[B]`` area over the perturbation curve, Samek et al. 2017 eq. 12:
        ``1/(S+1) sum_{k=0..S} f(x_0) - f(x_k)``. Most-relevant-first: higher is better."""
        return self.drop.mean(1)

    @property
    def auc(self) -> torch.Tensor:
        """``[B]`` area under the curve over the fraction perturbed (trapezoids on [0, 1]), Petsiuk et al. 2018.
        Deletion: lower is better; insertion: higher is better."""
        return torch.trapezoid(self.curve, self.fractions.to(self.curve.device), dim=1)

    def __repr__(self) -> str:
        batch, points = self.curve.shape
        return f"Curve({batch} samples x {points} points, order={self.order!r})"


def _curve(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    unit_ranks: torch.Tensor,
    counts: torch.Tensor,
    target: TargetLike,
    *,
    fill: torch.Tensor,
    insert: bool,
    softmax: bool,
    batch_size: int,
    order: str,
    units: int,
) -> Curve:
    """Scores for every (sample, step): after step k, units with rank < counts[k] come from ``fill`` (deletion)
    or, when ``insert``, from ``x`` with everything else from ``fill``."""
    runner = ModelRunner(model, batch_size, softmax)
    # Deletion's step 0 is the unperturbed input, scored here; insertion starts from ``fill`` instead, so its
    # target needs no forward of ``x`` unless it must be resolved on the output.
    target_fn, start = (runner.resolve(x, target), None) if insert else runner.start(x, target)
    batch, points = x.shape[0], counts.numel()
    device = x.device
    counts = counts.to(device)
    first = 0 if insert else 1
    per_sample = points - first
    # Items are step-major (item = step * batch + sample), so a chunk of whole steps is built by broadcasting
    # the batch against its steps (two tensor ops, no gathers); other chunks gather their samples.
    inside, outside = (x, fill) if insert else (fill, x)

    def build(begin: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        if begin % batch == 0 and end % batch == 0:
            steps = counts[first + begin // batch : first + end // batch]
            mask = unit_ranks[None] < steps.view(-1, 1, 1, 1, 1)
            inputs = torch.where(mask, inside[None], outside[None]).flatten(0, 1)
            return inputs, torch.arange(batch, device=device).repeat(steps.numel())
        items = torch.arange(begin, end, device=device)
        rows = items % batch
        mask = unit_ranks[rows] < counts[items // batch + first].view(-1, 1, 1, 1)
        return torch.where(mask, inside[rows], outside[rows]), rows

    scores = (
        runner.scores(build, batch * per_sample, target_fn, batch, device)
        .view(per_sample, batch)
        .T.contiguous()
    )
    curve = scores if start is None else torch.cat([start.to(device)[:, None], scores], 1)
    return Curve(curve, counts.float().cpu() / units, order)


def _unit_ranks(maps: torch.Tensor, order: str, seed: int) -> torch.Tensor:
    generator = generator_for(maps.device, seed) if order == "random" else None
    flat = maps.flatten(1)
    return ordered_ranks(flat, order, generator).view(maps.shape)


@register(
    "pixel_flipping",
    family="faithfulness",
    score="AOPC, most relevant first",
    per_sample="aopc",
    higher_is_better=True,
    reference="Bach et al. 2015, On Pixel-Wise Explanations for Non-Linear Classifier Decisions by LRP",
)
def pixel_flipping(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    order: str = "morf",
    per_step: int | None = None,
    replacement: ReplacementLike = "black",
    softmax: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> Curve:
    """Pixel flipping (Bach et al. 2015, "On pixel-wise explanations for non-linear classifier decisions by
    layer-wise relevance propagation"): replace units in the order of the map and follow the target score.

    ``order``: 'morf' (most relevant first: a faithful map makes the score fall fast, high ``.aopc``), 'lerf'
    (least relevant first: the score should stay, low ``.aopc``) or 'random'. ``per_step`` units change per
    step (default: a hundredth of them, rounded up; Bach et al. flip one at a time: ``per_step=1``).
    ``replacement``: 'black', 'mean', 'uniform', 'blur', a number or a baseline tensor (see
    :func:`deepscope.metrics.deletion` for the meanings). ``softmax=False`` follows the logit, as Bach et al.
    Ties in the map keep pixel order. ``seed`` drives the random order and uniform noise.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:2])
    >>> maps = x.clone().requires_grad_()
    >>> vm(maps).max(1).values.sum().backward()
    >>> result = ds.metrics.pixel_flipping(vm, x, maps.grad * x, per_step=8)
    >>> result.curve.shape, result.aopc.shape
    (torch.Size([2, 99]), torch.Size([2]))
    """
    x, maps = prepare(model, x, attributions)
    generator = generator_for(x.device, seed, stream=1)
    fill = replacement_values(_vision(model), x, replacement, generator)
    units = maps[0].numel()
    counts = step_counts(units, per_step)
    return _curve(
        model,
        x,
        _unit_ranks(maps, order, seed),
        counts,
        target,
        fill=fill,
        insert=False,
        softmax=softmax,
        batch_size=batch_size,
        order=order,
        units=units,
    )


@register(
    "deletion",
    family="faithfulness",
    score="AUC of the probability",
    per_sample="auc",
    higher_is_better=False,
    reference="Petsiuk et al. 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models",
)
def deletion(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    per_step: int | None = None,
    replacement: ReplacementLike = "black",
    softmax: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> Curve:
    """Deletion (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation of Black-box Models"):
    delete the most relevant units first and follow the class probability; ``.auc`` (lower is better).

    ``replacement`` is what deleted units become: 'black' (a black image through the model's normalization,
    Petsiuk's choice), 'mean' (each image's per-channel mean), 'uniform' (uniform [0,1] pixel noise, normalized),
    'blur' (a Gaussian blur of the image, kernel 11, sigma 5), a number (in input space) or a baseline tensor.
    ``per_step`` units per step (default: a hundredth, rounded up). ``softmax=True``: probabilities, as Petsiuk.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:2])
    >>> result = ds.metrics.deletion(vm, x, x)  # the digit's own ink as a heat map
    >>> bool((result.auc < 0.5).all())
    True
    """
    return pixel_flipping(
        model,
        x,
        attributions,
        target,
        order="morf",
        per_step=per_step,
        replacement=replacement,
        softmax=softmax,
        batch_size=batch_size,
        seed=seed,
    )


@register(
    "insertion",
    family="faithfulness",
    score="AUC of the probability",
    per_sample="auc",
    higher_is_better=True,
    reference="Petsiuk et al. 2018, RISE: Randomized Input Sampling for Explanation of Black-box Models",
)
def insertion(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    per_step: int | None = None,
    start: ReplacementLike = "blur",
    softmax: bool = True,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> Curve:
    """Insertion (Petsiuk et al. 2018): start from ``start`` (default a blurred copy of the image, as Petsiuk)
    and put the image's units back, most relevant first; ``.auc`` of the class probability (higher is better).

    ``start`` takes the same values as deletion's ``replacement``. Column 0 of ``.curve`` scores the start.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:2])
    >>> ds.metrics.insertion(vm, x, x, start="black").curve.shape  # 784 pixels, 8 per step
    torch.Size([2, 99])
    """
    x, maps = prepare(model, x, attributions)
    fill = replacement_values(_vision(model), x, start, generator_for(x.device, seed, stream=1))
    units = maps[0].numel()
    return _curve(
        model,
        x,
        _unit_ranks(maps, "morf", seed),
        step_counts(units, per_step),
        target,
        fill=fill,
        insert=True,
        softmax=softmax,
        batch_size=batch_size,
        order="morf",
        units=units,
    )


@register(
    "region_perturbation",
    family="faithfulness",
    score="AOPC, most relevant first",
    per_sample="aopc",
    higher_is_better=True,
    reference="Samek et al. 2017, Evaluating the Visualization of What a Deep Neural Network Has Learned",
)
def region_perturbation(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    region_size: int = 9,
    steps: int | None = 100,
    order: str = "morf",
    replacement: ReplacementLike = "uniform",
    softmax: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> Curve:
    """Region perturbation and AOPC (Samek et al. 2017, "Evaluating the visualization of what a deep neural
    network has learned"): rank the cells of a ``region_size`` grid by their summed relevance and perturb one
    cell per step; ``.aopc`` (morf: higher is better).

    The grid is centered: when ``region_size`` does not divide the image, the cells along the borders are cut
    (as in Quantus). ``steps`` caps the number of cells perturbed (Samek et al.: 100; None: all).
    ``replacement`` defaults to uniform noise, Samek's choice (see :func:`deletion` for the others).
    ``.fractions`` counts cells. ``softmax=False`` follows the logit.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:2])
    >>> result = ds.metrics.region_perturbation(vm, x, x, region_size=4)
    >>> result.curve.shape  # 7 x 7 cells
    torch.Size([2, 50])
    """
    x, maps = prepare(model, x, attributions)
    check_count("region_size", region_size)
    height, width = x.shape[-2:]
    cells, cell_of_pixel = _grid(height, width, region_size, x.device)
    relevance = maps.sum(1).flatten(1)  # [B, H*W]
    cell_relevance = torch.zeros(x.shape[0], cells, device=x.device, dtype=relevance.dtype)
    cell_relevance.index_add_(1, cell_of_pixel, relevance)
    cell_ranks = _unit_ranks(cell_relevance, order, seed)
    pixel_ranks = cell_ranks[:, cell_of_pixel].view(x.shape[0], 1, height, width)
    fill = replacement_values(_vision(model), x, replacement, generator_for(x.device, seed, stream=1))
    return _curve(
        model,
        x,
        pixel_ranks,
        step_counts(cells, 1, steps),
        target,
        fill=fill,
        insert=False,
        softmax=softmax,
        batch_size=batch_size,
        order=order,
        units=cells,
    )


def _grid(height: int, width: int, size: int, device: torch.device) -> tuple[int, torch.Tensor]:
    """The cell index of every pixel of a centered grid of ``size`` cells, and the number of cells."""
    pad_top = ((-height) % size) // 2
    pad_left = ((-width) % size) // 2
    rows = (torch.arange(height, device=device) + pad_top) // size
    columns = (torch.arange(width, device=device) + pad_left) // size
    grid_width = int(columns[-1]) + 1
    cells = (int(rows[-1]) + 1) * grid_width
    return cells, (rows[:, None] * grid_width + columns[None, :]).flatten()


@register(
    "infidelity",
    family="faithfulness",
    score="infidelity",
    per_sample=None,
    higher_is_better=False,
    reference="Yeh et al. 2019, On the (In)fidelity and Sensitivity of Explanations",
)
def infidelity(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    attributions: torch.Tensor,
    target: TargetLike = None,
    *,
    perturbation: str | torch.Tensor = "gaussian",
    samples: int = 32,
    scale: float = 0.1,
    patch: int = 4,
    replacement: ReplacementLike = "black",
    normalize: bool = True,
    softmax: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    seed: int = 0,
) -> torch.Tensor:
    """Infidelity (Yeh et al. 2019, "On the (In)fidelity and Sensitivity of Explanations"), per sample ``[B]``:
    ``E_I[(I . attribution - (f(x) - f(x - I)))^2]`` over random perturbations ``I``; lower is better.

    ``perturbation``: 'gaussian' (``I ~ N(0, scale^2)`` on every input feature), 'square' (a random
    ``patch`` x ``patch`` square set to ``replacement``: ``I = x - replacement`` inside it) or an explicit
    tensor of perturbations ``[S,B,C,H,W]`` (or ``[S,C,H,W]`` for all samples). ``samples`` random ones are
    drawn (seeded by ``seed``). A ``[B,1,H,W]`` map weighs every channel of its pixel. ``normalize`` first scales
    each map by the least-squares factor ``beta = E[I.a * df] / E[(I.a)^2]``, as Yeh et al.'s code does (the
    score is then invariant to the map's scale); Captum's ``infidelity(normalize=True)`` is the same.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> x = vm.preprocess(ds.datasets.mnist5k("test").images[:2])
    >>> ds.metrics.infidelity(vm, x, torch.rand_like(x), samples=8).shape
    torch.Size([2])
    """
    x, maps = prepare(model, x, attributions)
    batch = x.shape[0]
    draw = _perturbation_source(model, x, perturbation, samples, scale, patch, replacement, seed)
    runner = ModelRunner(model, batch_size, softmax)
    target_fn, start = runner.start(x, target)
    explained, output_change = [], []
    # Perturbations are drawn a block at a time (about batch_size images), so memory does not grow with samples.
    for block in draw.blocks(max(1, batch_size // batch)):
        count = block.shape[0]

        def build(begin: int, end: int, block: torch.Tensor = block) -> tuple[torch.Tensor, torch.Tensor]:
            # item = perturbation * batch + sample: whole perturbations broadcast, others gather
            if begin % batch == 0 and end % batch == 0:
                inputs = (x[None] - block[begin // batch : end // batch]).flatten(0, 1)
                return inputs, torch.arange(batch, device=x.device).repeat((end - begin) // batch)
            items = torch.arange(begin, end, device=x.device)
            rows = items % batch
            return x[rows] - block[items // batch, rows], rows

        scores = runner.scores(build, count * batch, target_fn, batch, x.device).view(count, batch)
        output_change.append(start.to(x.device)[None] - scores)
        explained.append((block * maps[None]).flatten(2).sum(2).float())
    change = torch.cat(output_change)  # [S, B]
    dot = torch.cat(explained)  # [S, B]
    if normalize:
        beta = (dot * change).mean(0) / (dot * dot).mean(0)
        dot = dot * beta[None]
    return ((dot - change) ** 2).mean(0)


class PerturbationSource:
    """Perturbations ``I`` ``[S,B,C,H,W]``, handed out in blocks along S; random ones are drawn one sample
    (``[B,C,H,W]``) at a time from a private generator, so blocks of any size give the same perturbations."""

    def __init__(
        self, count: int, draw_one: Callable[[int], torch.Tensor] | None, given: torch.Tensor | None = None
    ):
        self.count = count
        self.draw_one = draw_one
        self.given = given

    @classmethod
    def explicit(cls, given: torch.Tensor) -> PerturbationSource:
        """Given perturbations ``[S,B,C,H,W]``: blocks are views of them (no copies)."""
        return cls(given.shape[0], None, given)

    def blocks(self, size: int) -> Iterator[torch.Tensor]:
        for start in range(0, self.count, size):
            stop = min(start + size, self.count)
            if self.given is not None:
                yield self.given[start:stop]
            else:
                assert self.draw_one is not None
                yield torch.stack([self.draw_one(index) for index in range(start, stop)])


def _perturbation_source(
    model: VisionModel | nn.Module,
    x: torch.Tensor,
    perturbation: str | torch.Tensor,
    samples: int,
    scale: float,
    patch: int,
    replacement: ReplacementLike,
    seed: int,
) -> PerturbationSource:
    batch, _, height, width = x.shape
    if isinstance(perturbation, torch.Tensor):
        given = perturbation.to(x.device, x.dtype)
        if given.ndim == 4:
            given = given[:, None].expand(-1, batch, -1, -1, -1)
        if given.ndim != 5 or given.shape[1:] != x.shape:
            raise MetricError(
                f"explicit perturbations must be [S,B,C,H,W] or [S,C,H,W] for inputs {list(x.shape)}, "
                f"got {list(perturbation.shape)}"
            )
        return PerturbationSource.explicit(given)
    check_count("samples", samples)
    generator = generator_for(x.device, seed)
    if perturbation == "gaussian":
        return PerturbationSource(
            samples,
            lambda _: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * scale,
        )
    if perturbation == "square":
        if not isinstance(patch, int) or not 1 <= patch <= min(height, width):
            raise MetricError(f"patch must be an int between 1 and {min(height, width)}, got {patch!r}")
        removed = x - replacement_values(_vision(model), x, replacement, generator)
        rows = torch.arange(height, device=x.device).view(1, height, 1)
        columns = torch.arange(width, device=x.device).view(1, 1, width)

        def square(_: int) -> torch.Tensor:
            top = torch.randint(0, height - patch + 1, (batch, 1, 1), generator=generator, device=x.device)
            left = torch.randint(0, width - patch + 1, (batch, 1, 1), generator=generator, device=x.device)
            inside = (rows >= top) & (rows < top + patch) & (columns >= left) & (columns < left + patch)
            return removed * inside[:, None].to(x.dtype)

        return PerturbationSource(samples, square)
    raise MetricError(f"perturbation must be 'gaussian', 'square' or a tensor, got {perturbation!r}")


def _vision(model: VisionModel | nn.Module) -> VisionModel:
    from deepscope.zoo.vision_model import as_vision_model

    return as_vision_model(model)
