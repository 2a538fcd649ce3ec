"""Perturbation family: occlusion, prediction difference analysis, RISE.

Each method changes the input many times and reads how the target score moves: one forward per perturbed
input, no backward, under ``torch.inference_mode()``, ``batch_size`` perturbed inputs per forward (for all
samples of the batch together). Maps are ``[B,1,H,W]`` at the input's resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from deepscope.attribution.base import Attribution, MethodError, register
from deepscope.attribution.gradient import baseline_like
from deepscope.attribution.passes import class_scorer, clean_scores, perturbed_scores
from deepscope.attribution.targets import TargetLike


def _pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise MethodError(f"{what} must be a positive int or (height, width), got {value!r}")
    return pair


def window_positions(size: int, window: int, stride: int) -> list[int]:
    """Top (or left) edges of sliding windows along one axis, Captum's occlusion convention: ``0, stride,
    ...`` up to the first position whose window reaches the end (that last window may stick out and is cut).

    >>> window_positions(10, 4, 3)
    [0, 3, 6]
    >>> window_positions(10, 4, 4)
    [0, 4, 8]
    """
    return [index * stride for index in range(math.ceil((size - window) / stride) + 1)]


@register(
    "occlusion",
    family="perturbation",
    space="layer",
    passes="1 + (number of windows) forwards, no backward",
    reference="Zeiler & Fergus 2014, Visualizing and Understanding Convolutional Networks: occlusion "
    "sensitivity, score drop averaged over the sliding windows covering each pixel",
)
class Occlusion(Attribution):
    """Occlusion (Zeiler & Fergus 2014): a ``window`` (all channels) slides over the input with ``stride``
    and is filled with ``fill`` (a number, or a tensor broadcastable to the batch, e.g. a blurred copy); each
    pixel gets the mean, over the windows covering it, of ``score(x) - score(occluded x)``. Windows sit at
    ``0, stride, 2 stride, ...`` and the last one may stick out of the image (Captum's convention).
    Defaults: a window of 1/8 of the shorter side, half a window stride, fill 0 (the mean for normalised
    inputs).

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "occlusion", window=7, stride=7).shape
    torch.Size([1, 1, 28, 28])
    """

    default_batch_size = 32

    def __init__(
        self,
        model,
        layer=None,
        batch_size=None,
        *,
        window: int | tuple[int, int] | None = None,
        stride: int | tuple[int, int] | None = None,
        fill: float | torch.Tensor = 0.0,
    ):
        super().__init__(model, layer, batch_size)
        self.window = None if window is None else _pair(window, "window")
        self.stride = None if stride is None else _pair(stride, "stride")
        self.fill = fill

    def geometry(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        window = self.window or (max(1, round(min(height, width) / 8)),) * 2
        stride = self.stride or tuple(max(1, w // 2) for w in window)
        for axis, size in enumerate((height, width)):
            if window[axis] > size:
                raise MethodError(f"occlusion window {window} is larger than the input {height}x{width}")
            if stride[axis] > window[axis]:
                raise MethodError(
                    f"occlusion stride {stride} is larger than the window {window}: some pixels would "
                    "never be occluded"
                )
        return window, stride

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        inputs = inputs.to(self.vm.device)
        batch, _, height, width = inputs.shape
        (kh, kw), (sh, sw) = self.geometry(height, width)
        fill = baseline_like(self.fill, inputs, "fill")
        size = self.chunk_size(inputs)
        clean, target = clean_scores(self.vm, inputs, target, size, self.passes)
        windows = [
            (top, left)
            for top in window_positions(height, kh, sh)
            for left in window_positions(width, kw, sw)
        ]

        def build(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows = points % batch
            occluded = inputs[rows].clone()
            for index, (point, row) in enumerate(zip(points.tolist(), rows.tolist(), strict=True)):
                top, left = windows[point // batch]
                occluded[index, :, top : top + kh, left : left + kw] = fill[
                    row, :, top : top + kh, left : left + kw
                ]
            return occluded, rows

        drops = clean.repeat(len(windows)) - perturbed_scores(
            self.vm, len(windows) * batch, size, build, class_scorer(target, batch), batch, self.passes
        )
        total = torch.zeros(batch, height, width, dtype=drops.dtype, device=inputs.device)
        counts = torch.zeros(height, width, dtype=drops.dtype, device=inputs.device)
        for index, (top, left) in enumerate(windows):
            total[:, top : top + kh, left : left + kw] += drops[
                index * batch : (index + 1) * batch, None, None
            ]
            counts[top : top + kh, left : left + kw] += 1
        return (total / counts)[:, None].to(inputs.dtype)


@register(
    "rise",
    family="perturbation",
    space="layer",
    passes="1 + masks forwards, no backward",
    reference="Petsiuk, Das & Saenko 2018, RISE: Randomized Input Sampling for Explanation: class "
    "probability of the input masked by random upsampled binary grids, averaged with the masks as weights",
)
class RISE(Attribution):
    """RISE (Petsiuk et al. 2018): ``masks`` random binary ``cells x cells`` grids (each cell kept with
    probability ``p``), upsampled bilinearly to ``(cells+1)`` cell sizes and cropped at a random shift, mask
    the input; the map is ``sum_i score(x * M_i) M_i / (masks * p)``. The score is the target class's
    softmax probability (``probabilities=False``: the raw target score). The same masks serve every sample;
    they come from a generator seeded with ``seed`` and are made ``batch_size`` at a time.

    >>> import torch, deepscope as ds
    >>> vm = ds.load_model("zoo:lenet_mnist")
    >>> ds.attribute(vm, torch.rand(1, 1, 28, 28), "rise", masks=64).shape
    torch.Size([1, 1, 28, 28])
    """

    default_batch_size = 32

    def __init__(
        self,
        model,
        layer=None,
        batch_size=None,
        *,
        masks: int = 4000,
        cells: int = 7,
        p: float = 0.5,
        probabilities: bool = True,
        seed: int = 0,
    ):
        super().__init__(model, layer, batch_size)
        if not isinstance(masks, int) or masks < 1:
            raise MethodError(f"rise needs masks >= 1, got {masks!r}")
        if not isinstance(cells, int) or cells < 1:
            raise MethodError(f"rise needs cells >= 1, got {cells!r}")
        if not 0 < p <= 1:
            raise MethodError(f"rise needs 0 < p <= 1, got {p}")
        self.count, self.cells, self.p, self.probabilities, self.seed = masks, cells, p, probabilities, seed

    def grids(self, height: int, width: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The binary grids ``[masks, 1, cells, cells]`` and the crop shifts ``[masks, 2]`` (pixels)."""
        generator = torch.Generator().manual_seed(self.seed)
        grids = (torch.rand(self.count, 1, self.cells, self.cells, generator=generator) < self.p).float()
        cell = (math.ceil(height / self.cells), math.ceil(width / self.cells))
        shifts = torch.stack(
            [
                torch.randint(0, cell[0], (self.count,), generator=generator),
                torch.randint(0, cell[1], (self.count,), generator=generator),
            ],
            1,
        )
        return grids.to(device), shifts

    def masks(self, grids: torch.Tensor, shifts: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Grids -> ``[n, 1, H, W]`` smooth masks in [0, 1]."""
        cell = (math.ceil(height / self.cells), math.ceil(width / self.cells))
        big = torch.nn.functional.interpolate(
            grids,
            size=((self.cells + 1) * cell[0], (self.cells + 1) * cell[1]),
            mode="bilinear",
            align_corners=False,
        )
        return torch.stack(
            [big[i, :, dy : dy + height, dx : dx + width] for i, (dy, dx) in enumerate(shifts.tolist())]
        )

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        inputs = inputs.to(self.vm.device)
        batch, _, height, width = inputs.shape
        size = self.chunk_size(inputs)
        _, target = clean_scores(self.vm, inputs, target, size, self.passes, self.probabilities)
        grids, shifts = self.grids(height, width, inputs.device)
        total = torch.zeros(batch, 1, height, width, dtype=inputs.dtype, device=inputs.device)
        scorer = class_scorer(target, batch, self.probabilities)
        made: dict[str, torch.Tensor] = {}

        def build(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            rows, mask = points % batch, points // batch
            first = int(mask[0])
            made["masks"] = self.masks(
                grids[first : int(mask[-1]) + 1], shifts[first : int(mask[-1]) + 1], height, width
            ).to(inputs.dtype)
            made["index"] = mask - first
            return inputs[rows] * made["masks"][made["index"]], rows

        def score(output, rows: torch.Tensor) -> torch.Tensor:
            scores = scorer(output, rows)
            total.index_add_(0, rows, scores.view(-1, 1, 1, 1) * made["masks"][made["index"]])
            return scores

        perturbed_scores(self.vm, self.count * batch, size, build, score, batch, self.passes)
        return total / (self.count * self.p)


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
        centred = stacked - self.mean
        self.covariance = torch.einsum("nci,ncj->cij", centred, centred) / max(patches - 1, 1)
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
class PredictionDifference(Attribution):
    """Prediction difference analysis (Zintgraf et al. 2017). Each ``window x window`` patch (all channels)
    is marginalised out by replacing it with ``samples`` values and averaging the target class's softmax
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

    default_batch_size = 32

    def __init__(
        self,
        model,
        layer=None,
        batch_size=None,
        *,
        data: torch.Tensor | None = None,
        sampling: str = "conditional",
        window: int = 10,
        padding: int = 2,
        stride: int | None = None,
        samples: int = 10,
        train_size: int = 100_000,
        fit_patches: int = 20000,
        seed: int = 0,
    ):
        super().__init__(model, layer, batch_size)
        if sampling not in ("marginal", "conditional"):
            raise MethodError(f"sampling must be 'marginal' or 'conditional', got {sampling!r}")
        if not isinstance(data, torch.Tensor) or data.ndim != 4:
            raise MethodError(
                "prediction_difference samples windows from reference images: pass data=[N,C,H,W], a batch "
                "preprocessed like the inputs (e.g. vm.preprocess(images))"
            )
        for name, value, low in (("window", window, 1), ("padding", padding, 0), ("samples", samples, 1)):
            if not isinstance(value, int) or value < low:
                raise MethodError(f"{name} must be an int >= {low}, got {value!r}")
        if sampling == "marginal" and data.shape[0] < samples:
            raise MethodError(
                f"marginal sampling takes each window from the first {samples} images of data; data has "
                f"{data.shape[0]}"
            )
        self.data, self.sampling, self.window, self.padding = data, sampling, window, padding
        self.stride = stride or max(1, window // 2)
        self.samples, self.train_size, self.fit_patches, self.seed = samples, train_size, fit_patches, seed

    def positions(self, size: int) -> list[int]:
        last = size - self.window
        if last < 0:
            raise MethodError(f"window {self.window} is larger than the input side {size}")
        found = list(range(0, last + 1, self.stride))
        return found if found[-1] == last else [*found, last]

    def attribute(self, inputs: torch.Tensor, target: TargetLike = None) -> torch.Tensor:
        inputs = inputs.to(self.vm.device)
        batch, channels, height, width = inputs.shape
        if tuple(self.data.shape[1:]) != (channels, height, width):
            raise MethodError(
                f"data images are {list(self.data.shape[1:])}, inputs {[channels, height, width]}"
            )
        if target is not None and (callable(target) or isinstance(target, bool)):
            raise MethodError(
                "prediction_difference explains a class probability: target must be None, a class index or "
                "one class index per sample"
            )
        size = self.chunk_size(inputs)
        clean, target = clean_scores(self.vm, inputs, target, size, self.passes, probabilities=True)
        windows = [(top, left) for top in self.positions(height) for left in self.positions(width)]
        k, draws = self.window, self.samples
        sampler = (
            ConditionalPatchSampler(self.data.cpu(), k, self.padding, self.fit_patches, self.seed)
            if self.sampling == "conditional"
            else None
        )
        reference = self.data.to(inputs.device, inputs.dtype)[:draws]
        cached: dict[tuple[int, int], torch.Tensor] = {}

        def patches(window: int, row: int) -> torch.Tensor:
            top, left = windows[window]
            if sampler is None:
                return reference[:, :, top : top + k, left : left + k]
            if (window, row) not in cached:
                generator = torch.Generator().manual_seed(self.seed + window * batch + row)
                cached.clear()
                cached[(window, row)] = sampler.sample(inputs[row].cpu(), top, left, draws, generator).to(
                    inputs.device
                )
            return cached[(window, row)]

        def build(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            pairs, draw = points // draws, points % draws
            rows = pairs % batch
            filled = inputs[rows].clone()
            for index, (pair, row, d) in enumerate(
                zip(pairs.tolist(), rows.tolist(), draw.tolist(), strict=True)
            ):
                top, left = windows[pair // batch]
                filled[index, :, top : top + k, left : left + k] = patches(pair // batch, row)[d]
            return filled, rows

        scorer = class_scorer(target, batch, True)
        classes: list[int] = []

        def score(output: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
            classes[:] = [output.shape[1]]
            return scorer(output, rows)

        probabilities = perturbed_scores(
            self.vm, len(windows) * batch * draws, size, build, score, batch, self.passes
        )
        marginal = probabilities.view(len(windows), batch, draws).mean(2).to(torch.float64)
        classes = classes[0]
        evidence = _log2_odds(clean.to(torch.float64), self.train_size, classes) - _log2_odds(
            marginal, self.train_size, classes
        )
        total = torch.zeros(batch, height, width, dtype=torch.float64, device=inputs.device)
        counts = torch.zeros(height, width, dtype=torch.float64, device=inputs.device)
        for index, (top, left) in enumerate(windows):
            total[:, top : top + k, left : left + k] += evidence[index][:, None, None]
            counts[top : top + k, left : left + k] += 1
        return (total / counts)[:, None].to(inputs.dtype)


def _log2_odds(probability: torch.Tensor, train_size: int, classes: int) -> torch.Tensor:
    corrected = (probability * train_size + 1) / (train_size + classes)
    return torch.log2(corrected / (1 - corrected))
