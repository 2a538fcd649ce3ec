"""Perturbation family: occlusion, prediction difference analysis, RISE.

Each method changes the input many times and reads how the target score moves. They share one engine
(:class:`PerturbationMethod`, over :func:`~deepscope.attribution.passes.perturb`): one clean forward gives the
target's score and fixes the target (the top-1 class when none is given), then the perturbed inputs go through
the model ``batch_size`` at a time (for all samples of the batch together), one forward each, no backward, under
``torch.inference_mode()``. A method defines one step, :meth:`~PerturbationMethod.perturbations`: which perturbed
inputs to build and how to weigh their scores into maps. Maps are ``[B,1,H,W]`` at the input's resolution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from deepscope.attribution.base import Attribution, MethodError, register
from deepscope.attribution.gradient import baseline_like
from deepscope.attribution.passes import CleanPass, Perturbations, clean_scores, perturb
from deepscope.attribution.targets import TargetLike


class PerturbationMethod(Attribution):
    """The engine of the perturbation methods: the clean forward, then the perturbed inputs of
    :meth:`perturbations` (the step a method defines), scored and weighed into maps."""

    default_batch_size = 32

    def perturbations(self, inputs: torch.Tensor, clean: CleanPass) -> Perturbations:
        """This call's perturbed inputs and how their scores make the maps."""
        raise NotImplementedError

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        size = self.chunk_size(inputs)
        clean = clean_scores(self.vm, inputs, target, size, self.passes, self.scores_softmax())
        return perturb(
            self.vm, self.perturbations(inputs, clean), clean.target, size, self.passes, self.scores_softmax()
        )

    def scores_softmax(self) -> bool:
        """Whether the scores are the target's softmax probability (True) or its raw score."""
        return False


def window_positions(size: int, window: int, stride: int) -> list[int]:
    """Top (or left) edges of sliding windows along one axis, Captum's occlusion convention: ``0, stride,
    ...`` up to the first position whose window reaches the end (that last window may stick out and is cut).

    >>> window_positions(10, 4, 3)
    [0, 3, 6]
    >>> window_positions(10, 4, 4)
    [0, 4, 8]
    """
    return [index * stride for index in range(math.ceil((size - window) / stride) + 1)]


def _pair(value: int | tuple[int, int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if not all(v >= 1 for v in pair):
        raise MethodError(f"{what} must be a positive int or (height, width), got {value!r}")
    return pair


@register(
    "occlusion",
    family="perturbation",
    space="layer",
    passes="1 + (number of windows) forwards, no backward",
    reference="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks: occlusion "
    "sensitivity, score drop averaged over the sliding windows covering each pixel",
)
class Occlusion(PerturbationMethod):
    """Occlusion (Zeiler & Fergus 2014): a ``window`` (all channels) slides over the input with ``stride``
    and is filled with ``fill`` (a number, or a tensor broadcastable to the batch, e.g. a blurred copy); each
    pixel gets the mean, over the windows covering it, of ``score(x) - score(occluded x)``. Windows sit at
    ``0, stride, 2 stride, ...`` and the last one may stick out of the image (Captum's convention).
    Defaults: a window of 1/8 of the shorter side, half a window stride, fill 0 (the mean for normalized
    inputs).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "occlusion", window=7, stride=7).shape
    torch.Size([1, 1, 28, 28])
    """

    @dataclass(frozen=True, eq=False)
    class Options(PerturbationMethod.Options):
        window: int | tuple[int, int] | None = None
        stride: int | tuple[int, int] | None = None
        fill: float | torch.Tensor = 0.0

        def check(self) -> None:
            for name in ("window", "stride"):
                if getattr(self, name) is not None:
                    _pair(getattr(self, name), name)

    @classmethod
    def quick_options(cls, size: tuple[int, int]) -> dict:
        side = max(1, min(size) // 4)  # 16 windows
        return {"window": side, "stride": side}

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        window = (
            _pair(self.options.window, "window")
            if self.options.window is not None
            else (max(1, round(min(height, width) / 8)),) * 2
        )
        stride = (
            _pair(self.options.stride, "stride")
            if self.options.stride is not None
            else tuple(max(1, w // 2) for w in window)
        )
        for axis, size in enumerate((height, width)):
            if window[axis] > size:
                raise MethodError(f"occlusion window {window} is larger than the input {height}x{width}")
            if stride[axis] > window[axis]:
                raise MethodError(
                    f"occlusion stride {stride} is larger than the window {window}: some pixels would "
                    "never be occluded"
                )
        return window, stride

    def perturbations(self, inputs: torch.Tensor, clean: CleanPass) -> Perturbations:
        return OccludedWindows(inputs, clean, *self.geometry(*inputs.shape[-2:]), self.options.fill)


class OccludedWindows(Perturbations):
    """Input ``w * B + b`` is sample ``b`` with window ``w`` filled; a pixel's map value is the mean score drop
    over the windows covering it."""

    def __init__(
        self,
        inputs: torch.Tensor,
        clean: CleanPass,
        window: tuple[int, int],
        stride: tuple[int, int],
        fill: float | torch.Tensor,
    ):
        height, width = inputs.shape[-2:]
        self.window = window
        self.windows = [
            (top, left)
            for top in window_positions(height, window[0], stride[0])
            for left in window_positions(width, window[1], stride[1])
        ]
        super().__init__(inputs, len(self.windows) * inputs.shape[0])
        self.clean = clean.scores
        self.fill = baseline_like(fill, inputs, "fill")

    def build(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (kh, kw), rows = self.window, points % self.batch
        occluded = self.inputs[rows].clone()
        for index, (point, row) in enumerate(zip(points.tolist(), rows.tolist(), strict=True)):
            top, left = self.windows[point // self.batch]
            occluded[index, :, top : top + kh, left : left + kw] = self.fill[
                row, :, top : top + kh, left : left + kw
            ]
        return occluded, rows

    def maps(self, scores: torch.Tensor) -> torch.Tensor:
        (kh, kw), batch = self.window, self.batch
        height, width = self.inputs.shape[-2:]
        drops = self.clean.repeat(len(self.windows)) - scores
        total = torch.zeros(batch, height, width, dtype=drops.dtype, device=self.inputs.device)
        counts = torch.zeros(height, width, dtype=drops.dtype, device=self.inputs.device)
        for index, (top, left) in enumerate(self.windows):
            total[:, top : top + kh, left : left + kw] += drops[
                index * batch : (index + 1) * batch, None, None
            ]
            counts[top : top + kh, left : left + kw] += 1
        return (total / counts)[:, None].to(self.inputs.dtype)


@register(
    "rise",
    family="perturbation",
    space="layer",
    passes="1 + masks forwards, no backward",
    reference="Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation: class "
    "probability of the input masked by random upsampled binary grids, averaged with the masks as weights",
)
class RISE(PerturbationMethod):
    """RISE (Petsiuk et al. 2018): ``masks`` random binary ``cells x cells`` grids (each cell kept with
    probability ``p``), upsampled bilinearly to ``(cells+1)`` cell sizes and cropped at a random shift, mask
    the input; the map is ``sum_i score(x * M_i) M_i / (masks * p)``. The score is the target class's
    softmax probability (``softmax=False``: the raw target score). The same masks serve every sample;
    they come from a generator seeded with ``seed`` and are made ``batch_size`` at a time.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "rise", masks=64).shape
    torch.Size([1, 1, 28, 28])
    """

    @dataclass(frozen=True, eq=False)
    class Options(PerturbationMethod.Options):
        masks: int = 4000
        cells: int = 7
        p: float = 0.5
        softmax: bool = True
        seed: int = 0

        def check(self) -> None:
            if self.masks < 1:
                raise MethodError(f"rise needs masks >= 1, got {self.masks!r}")
            if self.cells < 1:
                raise MethodError(f"rise needs cells >= 1, got {self.cells!r}")
            if not 0 < self.p <= 1:
                raise MethodError(f"rise needs 0 < p <= 1, got {self.p}")

    @classmethod
    def quick_options(cls, size: tuple[int, int]) -> dict:
        return {"masks": 64}

    def scores_softmax(self) -> bool:
        return self.options.softmax

    def grids(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The binary grids ``[masks, 1, cells, cells]`` and the crop shifts ``[masks, 2]`` (pixels)."""
        count, cells = self.options.masks, self.options.cells
        generator = torch.Generator().manual_seed(self.options.seed)
        grids = (torch.rand(count, 1, cells, cells, generator=generator) < self.options.p).float()
        cell = (math.ceil(height / cells), math.ceil(width / cells))
        shifts = torch.stack(
            [
                torch.randint(0, cell[0], (count,), generator=generator),
                torch.randint(0, cell[1], (count,), generator=generator),
            ],
            1,
        )
        return grids.to(device), shifts

    def masks(self, grids: torch.Tensor, shifts: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Grids -> ``[n, 1, H, W]`` smooth masks in [0, 1]."""
        cells = self.options.cells
        cell = (math.ceil(height / cells), math.ceil(width / cells))
        big = torch.nn.functional.interpolate(
            grids,
            size=((cells + 1) * cell[0], (cells + 1) * cell[1]),
            mode="bilinear",
            align_corners=False,
        )
        return torch.stack(
            [big[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts.tolist())]
        )

    def perturbations(self, inputs: torch.Tensor, clean: CleanPass) -> Perturbations:
        return RandomMasks(inputs, self)


class RandomMasks(Perturbations):
    """Input ``i * B + b`` is sample ``b`` times mask ``i``; the map accumulates ``score * mask`` as the scores
    come, so that no more than one chunk of masks exists at a time."""

    def __init__(self, inputs: torch.Tensor, method: RISE):
        super().__init__(inputs, method.options.masks * inputs.shape[0])
        self.method = method
        self.size = tuple(inputs.shape[-2:])
        self.grids, self.shifts = method.grids(*self.size, inputs.device)
        self.total = torch.zeros(self.batch, 1, *self.size, dtype=inputs.dtype, device=inputs.device)
        self.chunk_masks = torch.empty(0)

    def build(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        rows, mask = points % self.batch, points // self.batch
        first, last = int(mask[0]), int(mask[-1]) + 1
        made = self.method.masks(self.grids[first:last], self.shifts[first:last], *self.size)
        self.chunk_masks = made.to(self.inputs.dtype)[mask - first]
        return self.inputs[rows] * self.chunk_masks, rows

    def weigh(self, points: torch.Tensor, rows: torch.Tensor, scores: torch.Tensor) -> None:
        self.total.index_add_(0, rows, scores.view(-1, 1, 1, 1) * self.chunk_masks)

    def maps(self, scores: torch.Tensor) -> torch.Tensor:
        return self.total / (self.method.options.masks * self.method.options.p)


# ----------------------------------------------------------------------------------------------------------
# prediction difference analysis


class ConditionalPatchSampler:
    """Zintgraf et al.'s conditional sampler: a Gaussian over ``(window + 2 padding)^2`` pixel patches, one
    per channel (channels independent), fitted on ``patches`` patches at random positions of ``data``; a
    window is sampled from its conditional given the surrounding frame of the image being explained. Near
    the border the frame is shifted to stay inside the image, as in the reference code. Samples are clipped
    to each channel's range in ``data``.
    """

    def __init__(self, data: torch.Tensor, window: int, padding: int, patches: int = 20000, seed: int = 0):
        count, _, height, width = data.shape
        self.window, self.padding = window, padding
        self.size = window + 2 * padding
        if self.size > min(height, width):
            raise MethodError(
                f"window + 2 * padding = {self.size} is larger than the images {height}x{width}"
            )
        generator = torch.Generator().manual_seed(seed)
        images = torch.randint(0, count, (patches,), generator=generator).tolist()
        tops = torch.randint(0, height - self.size + 1, (patches,), generator=generator).tolist()
        lefts = torch.randint(0, width - self.size + 1, (patches,), generator=generator).tolist()
        data64 = data.detach().to(torch.float64)
        stacked = torch.stack(
            [
                data64[i, :, top : top + self.size, left : left + self.size]
                for i, top, left in zip(images, tops, lefts, strict=True)
            ]
        ).flatten(2)  # [patches, C, size^2]
        self.mean = stacked.mean(0)  # [C, size^2]
        centered = stacked - self.mean
        self.covariance = torch.einsum("nci,ncj->cij", centered, centered) / max(patches - 1, 1)
        self.low = data64.transpose(0, 1).flatten(1).amin(1)
        self.high = data64.transpose(0, 1).flatten(1).amax(1)
        self._conditionals: dict[
            tuple[int, int], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
        ] = {}

    def frame(self, top: int, left: int, height: int, width: int) -> tuple[int, int]:
        """Top-left corner of the conditioning frame of the window at (top, left)."""
        return (
            min(max(top - self.padding, 0), height - self.size),
            min(max(left - self.padding, 0), width - self.size),
        )

    def conditional(self, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """For a window at offset (dy, dx) inside the frame: inner indices, outer indices, the regression
        matrix ``S_io S_oo^-1`` ``[C, k^2, o]`` and the Cholesky factor of the conditional covariance."""
        key = (dy, dx)
        if key not in self._conditionals:
            grid = torch.arange(self.size * self.size).view(self.size, self.size)
            inner = grid[dy : dy + self.window, dx : dx + self.window].flatten()
            outer = torch.tensor(
                [i for i in range(self.size * self.size) if i not in set(inner.tolist())], dtype=torch.long
            )
            cov = self.covariance
            s_ii = cov[:, inner][:, :, inner]
            s_io = cov[:, inner][:, :, outer]
            s_oo = cov[:, outer][:, :, outer]
            if len(outer):
                regression = torch.linalg.solve(s_oo, s_io.transpose(1, 2)).transpose(1, 2)
                conditional = s_ii - regression @ s_io.transpose(1, 2)
            else:
                regression = torch.zeros(cov.shape[0], len(inner), 0, dtype=cov.dtype)
                conditional = s_ii
            conditional = (conditional + conditional.transpose(1, 2)) / 2
            jitter = 1e-10 * conditional.diagonal(dim1=1, dim2=2).abs().mean(1).clamp_min(1e-12)
            eye = torch.eye(len(inner), dtype=cov.dtype)
            factor = torch.linalg.cholesky(conditional + (jitter[:, None, None] + 1e-12) * eye)
            self._conditionals[key] = (inner, outer, regression, factor)
        return self._conditionals[key]

    def sample(
        self, image: torch.Tensor, top: int, left: int, count: int, generator: torch.Generator
    ) -> torch.Tensor:
        """``count`` samples ``[count, C, k, k]`` of the window at (top, left) of ``image`` ``[C,H,W]``."""
        channels, height, width = image.shape
        frame_top, frame_left = self.frame(top, left, height, width)
        inner, outer, regression, factor = self.conditional(top - frame_top, left - frame_left)
        patch = image[:, frame_top : frame_top + self.size, frame_left : frame_left + self.size]
        patch = patch.detach().to(torch.float64).flatten(1)  # [C, size^2]
        mean = (
            self.mean[:, inner] + (regression @ (patch[:, outer] - self.mean[:, outer])[:, :, None])[:, :, 0]
        )
        noise = torch.randn(count, channels, len(inner), 1, generator=generator, dtype=torch.float64)
        samples = mean + (factor @ noise)[..., 0]
        samples = torch.maximum(torch.minimum(samples, self.high[:, None]), self.low[:, None])
        return samples.view(count, channels, self.window, self.window).to(image.dtype)


@register(
    "prediction_difference",
    family="perturbation",
    space="layer",
    passes="1 + windows x samples forwards, no backward",
    reference="Zintgraf, Cohen, Adel & Welling 2017, Visualizing Deep Neural Network Decisions: Prediction "
    "Difference Analysis: weight of evidence in log2 odds with Laplace correction, marginal or "
    "conditional (Gaussian) sampling of windows",
)
class PredictionDifference(PerturbationMethod):
    """Prediction difference analysis (Zintgraf et al. 2017). Each ``window x window`` patch (all channels)
    is marginalized out by replacing it with ``samples`` values and averaging the target class's softmax
    probability; its relevance is the weight of evidence
    ``WE = log2 odds(p'(c|x)) - log2 odds(p'(c|x without the patch))``, with Laplace's correction
    ``p' = (p N + 1) / (N + K)`` (``N = train_size``, K classes; the reference code's N = 100,000). Each
    pixel gets the mean over the windows covering it.

    ``sampling='marginal'``: the patch at the same place in the first ``samples`` images of ``data``
    (the reference code's marginal sampler). ``sampling='conditional'`` (the paper's main method): a
    Gaussian over patches of side ``window + 2 padding`` fitted on ``data``, sampled given the frame of
    ``padding`` pixels around the window (see :class:`ConditionalPatchSampler`). ``data`` is a batch of
    preprocessed images like the inputs (the more, the better the fit). Windows slide by ``stride``
    (the paper: 1) and always lie inside the image.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> data = torch.rand(12, 1, 28, 28)
    >>> ds.attribute(vm, data[:1], "prediction_difference", data=data, window=7, stride=7, samples=2).shape
    torch.Size([1, 1, 28, 28])
    """

    @dataclass(frozen=True, eq=False)
    class Options(PerturbationMethod.Options):
        data: torch.Tensor
        sampling: str = "conditional"
        window: int = 10
        padding: int = 2
        stride: int | None = None
        samples: int = 10
        train_size: int = 100_000
        fit_patches: int = 20000
        seed: int = 0

        def check(self) -> None:
            if self.sampling not in ("marginal", "conditional"):
                raise MethodError(f"sampling must be 'marginal' or 'conditional', got {self.sampling!r}")
            if self.data.ndim != 4:
                raise MethodError(
                    "prediction_difference samples windows from reference images: pass data=[N,C,H,W], a batch "
                    f"preprocessed like the inputs (e.g. vm.preprocess(images)), not shape {list(self.data.shape)}"
                )
            for name, low in (("window", 1), ("padding", 0), ("samples", 1), ("stride", 1)):
                value = getattr(self, name)
                if value is not None and value < low:
                    raise MethodError(f"{name} must be an int >= {low}, got {value!r}")
            if self.sampling == "marginal" and self.data.shape[0] < self.samples:
                raise MethodError(
                    f"marginal sampling takes each window from the first {self.samples} images of data; data "
                    f"has {self.data.shape[0]}"
                )

    @classmethod
    def quick_options(cls, size: tuple[int, int]) -> dict:
        side = max(1, min(size) // 4)  # 16 windows, 2 marginal samples each
        return {"sampling": "marginal", "window": side, "stride": side, "samples": 2}

    def scores_softmax(self) -> bool:
        return True

    def positions(self, size: int) -> list[int]:
        window = self.options.window
        last = size - window
        if last < 0:
            raise MethodError(f"window {window} is larger than the input side {size}")
        found = list(range(0, last + 1, self.options.stride or max(1, window // 2)))
        return found if found[-1] == last else [*found, last]

    def compute(self, inputs: torch.Tensor, target: TargetLike) -> torch.Tensor:
        data = self.options.data
        if tuple(data.shape[1:]) != tuple(inputs.shape[1:]):
            raise MethodError(f"data images are {list(data.shape[1:])}, inputs {list(inputs.shape[1:])}")
        if target is not None and (callable(target) or isinstance(target, bool)):
            raise MethodError(
                "prediction_difference explains a class probability: target must be None, a class index or "
                "one class index per sample"
            )
        return super().compute(inputs, target)

    def perturbations(self, inputs: torch.Tensor, clean: CleanPass) -> Perturbations:
        height, width = inputs.shape[-2:]
        windows = [(top, left) for top in self.positions(height) for left in self.positions(width)]
        return SampledWindows(inputs, clean, windows, self.options)


class SampledWindows(Perturbations):
    """Input ``(w * B + b) * samples + d`` is sample ``b`` with window ``w`` replaced by draw ``d``; a window's
    weight of evidence compares the clean probability with the mean over its draws, and a pixel's map value is
    the mean over the windows covering it."""

    def __init__(
        self,
        inputs: torch.Tensor,
        clean: CleanPass,
        windows: list[tuple[int, int]],
        options: PredictionDifference.Options,
    ):
        super().__init__(inputs, len(windows) * inputs.shape[0] * options.samples)
        self.clean, self.windows, self.options = clean, windows, options
        self.sampler = (
            ConditionalPatchSampler(
                options.data.cpu(), options.window, options.padding, options.fit_patches, options.seed
            )
            if options.sampling == "conditional"
            else None
        )
        self.reference = options.data.to(inputs.device, inputs.dtype)[: options.samples]
        self.cached: dict[tuple[int, int], torch.Tensor] = {}

    def patches(self, window: int, row: int) -> torch.Tensor:
        """The ``samples`` draws ``[samples, C, k, k]`` for window ``window`` of sample ``row``."""
        top, left = self.windows[window]
        k = self.options.window
        if self.sampler is None:
            return self.reference[:, :, top : top + k, left : left + k]
        if (window, row) not in self.cached:
            generator = torch.Generator().manual_seed(self.options.seed + window * self.batch + row)
            self.cached.clear()  # inputs come window by window: one window's draws are all that is reused
            draws = self.sampler.sample(self.inputs[row].cpu(), top, left, self.options.samples, generator)
            self.cached[(window, row)] = draws.to(self.inputs.device)
        return self.cached[(window, row)]

    def build(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, batch = self.options.window, self.batch
        pairs, draw = points // self.options.samples, points % self.options.samples
        rows = pairs % batch
        filled = self.inputs[rows].clone()
        for index, (pair, row, d) in enumerate(
            zip(pairs.tolist(), rows.tolist(), draw.tolist(), strict=True)
        ):
            top, left = self.windows[pair // batch]
            filled[index, :, top : top + k, left : left + k] = self.patches(pair // batch, row)[d]
        return filled, rows

    def maps(self, scores: torch.Tensor) -> torch.Tensor:
        k, batch, train_size = self.options.window, self.batch, self.options.train_size
        height, width = self.inputs.shape[-2:]
        marginal = scores.view(len(self.windows), batch, self.options.samples).mean(2).to(torch.float64)
        classes = self.clean.classes
        evidence = _log2_odds(self.clean.scores.to(torch.float64), train_size, classes) - _log2_odds(
            marginal, train_size, classes
        )
        total = torch.zeros(batch, height, width, dtype=torch.float64, device=self.inputs.device)
        counts = torch.zeros(height, width, dtype=torch.float64, device=self.inputs.device)
        for index, (top, left) in enumerate(self.windows):
            total[:, top : top + k, left : left + k] += evidence[index][:, None, None]
            counts[top : top + k, left : left + k] += 1
        return (total / counts)[:, None].to(self.inputs.dtype)


def _log2_odds(probability: torch.Tensor, train_size: int, classes: int) -> torch.Tensor:
    corrected = (probability * train_size + 1) / (train_size + classes)
    return torch.log2(corrected / (1 - corrected))
