"""Mergeable reductions a scan computes on the fly: activation histograms, per-unit statistics, per-unit top-k
and the confusion matrix.

Every reduction is a sum, a max or a top-k over samples, so reductions over disjoint shards of a dataset (chunks
of a resumed scan, Ray actors) merge into exactly the reduction over the whole dataset. Each keeps a fixed-size
state on the model's device; :meth:`ScanState.state_dict` turns it into NumPy arrays for storage.

**Histogram bins.** Activation ranges are unknown before a scan, differ by orders of magnitude between layers,
and shards must agree on bins without talking to each other. So the bins are fixed up front by the float32
format itself: a value's bin is the top 12 bits of its IEEE-754 representation (sign, 8 exponent bits, the 3
leading mantissa bits). That is a logarithmic histogram with 8 bins per octave (each bin at most 12.5% wide
relative to its lower edge), covering every float32 from the smallest denormal to infinity, with an exact-zero
bin (which also holds |x| < 2^-129, the denormals below 1.5e-39) and NaN / infinity in the top exponent bins.
Binning costs a shift, a mask and one bincount per element; no range pass, no rebinning, no overflow bins. The same
idea as HDR histograms and DDSketch (Masson et al., "DDSketch: a fast and fully-mergeable quantile sketch with
relative-error guarantees", VLDB 2019), whose bins are also fixed powers of a base.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from deepscope.errors import LayerNotFoundError, SettingError
from deepscope.units.topk import TopK

# 1 sign bit + 8 exponent bits + 3 mantissa bits.
MANTISSA_BITS = 3
SHIFT = 23 - MANTISSA_BITS
BINS = 1 << (32 - SHIFT)
_HALF = BINS // 2
_EXPONENT_MAX = 255 << MANTISSA_BITS  # first bin of the inf/NaN exponent, per sign


def bin_edges() -> np.ndarray:
    """Lower and upper edge of every bin, ``[BINS, 2]`` float64 (for negative bins, lower < upper too).
    Bins of infinity and NaN have infinite or NaN edges.

    >>> edges = bin_edges()
    >>> edges[float_bins(torch.tensor([1.0, -3.0]))].tolist()  # 8 bins per octave
    [[1.0, 1.125], [-3.25, -3.0]]
    """
    codes = np.arange(_HALF, dtype=np.uint32)
    with np.errstate(invalid="ignore"):
        low = (codes << SHIFT).view(np.float32).astype(np.float64)
        high = np.append(low[1:], np.inf)
    positive = np.stack([low, high], axis=1)
    negative = np.stack([-high, -low], axis=1)
    return np.concatenate([positive, negative])


def float_bins(x: torch.Tensor) -> torch.Tensor:
    """The bin of every element of ``x`` (flattened), int32 in [0, BINS): the top 12 bits of its float32 bits.

    >>> float_bins(torch.tensor([0.0, 1.0, 1.1, 2.0, -0.0])).tolist()
    [0, 1016, 1016, 1024, 2048]
    """
    bits = _flat(x.detach().to(torch.float32)).view(torch.int32)
    # The shift allocates the only temporary; the mask is applied in place on it.
    return torch.bitwise_right_shift(bits, SHIFT).bitwise_and_(BINS - 1)


def _flat(x: torch.Tensor) -> torch.Tensor:
    """The elements of ``x`` as one dimension, in memory order: a view (no copy) for standard and channels-last
    layouts, which is all an order-free reduction needs."""
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return x.permute(0, 2, 3, 1).reshape(-1)
    return x.reshape(-1)


def float_histogram(x: torch.Tensor) -> torch.Tensor:
    """Counts of the elements of ``x`` per bin, int64 ``[BINS]`` (``bincount(float_bins(x))``).

    >>> counts = float_histogram(torch.tensor([[1.0, 1.1], [2.0, 0.0]]))
    >>> counts.nonzero().flatten().tolist(), counts[1016].item()
    ([0, 1016, 1024], 2)

    Two passes over the values (shift, then the in-place mask) and one bincount into 4096 counters (32 KiB,
    cache-resident). Reading the upper 16 bits as an int16 view and folding 65536 fine bins was measured
    2.4x slower on large maps (the int16 -> int32 conversion pass and a 512 KiB counter array).
    """
    if x.numel() == 0:
        return torch.zeros(BINS, dtype=torch.int64, device=x.device)
    return torch.bincount(float_bins(x), minlength=BINS)


@dataclass
class Histogram:
    """Counts of values per bin: ``counts[i]`` values fell in ``[lower[i], upper[i])``, bins sorted by value.

    ``kind`` is 'log' (the scan's float-bit bins; only non-empty bins are kept, so consecutive bins need not
    touch; the zero bin is ``[-1.5e-39, 1.5e-39)``) or 'linear' (contiguous, equal widths). ``high`` and ``mean``
    are exact; ``low`` is exact for linear histograms and the lowest non-empty bin's lower edge for log ones;
    ``total`` counts every value, ``zeros`` those in the zero bin and ``non_finite`` the infinities and NaNs.
    """

    counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    kind: str
    low: float
    high: float
    mean: float
    total: int
    zeros: int = 0
    positives: int = 0
    non_finite: int = 0

    @property
    def zero_fraction(self) -> float:
        """Fraction of values that are exactly zero (the sparsity of a ReLU output)."""
        return self.zeros / self.total if self.total else float("nan")

    @property
    def positive_fraction(self) -> float:
        """Fraction of values above zero (for a pre-activation: the share a following ReLU lets through)."""
        return self.positives / self.total if self.total else float("nan")

    def quantile(self, q: float) -> float:
        """The ``q`` quantile, to within one bin (relative error <= 12.5% for log bins)."""
        if not 0 <= q <= 1:
            raise SettingError(f"q must be in [0, 1], got {q}")
        cumulative = np.cumsum(self.counts)
        if cumulative.size == 0 or cumulative[-1] == 0:
            return float("nan")
        index = int(np.searchsorted(cumulative, q * cumulative[-1], side="left"))
        index = min(index, len(self.counts) - 1)
        return float(np.clip((self.lower[index] + self.upper[index]) / 2, self.low, self.high))

    def rebin(self, bins: int = 64, range: tuple[float, float] | None = None) -> Histogram:
        """Linear bins over ``range`` (default: the extremes), for display. Values are taken as spread evenly
        within each source bin, so a wide log bin shares its count among the linear bins it covers (the counts
        become fractional; their sum is kept)."""
        low, high = range if range is not None else (self.low, self.high)
        if not np.isfinite([low, high]).all() or high <= low:
            low, high = (low, low + 1.0) if np.isfinite(low) else (0.0, 1.0)
        edges = np.linspace(low, high, bins + 1)
        lower = np.clip(self.lower, low, high)
        upper = np.clip(self.upper, low, high)
        # Piecewise-linear cumulative count through the (sorted, disjoint) source bins.
        points = np.stack([lower, upper], axis=1).ravel()
        cumulative = np.cumsum(self.counts.astype(np.float64))
        values = np.stack([cumulative - self.counts, cumulative], axis=1).ravel()
        if points.size == 0:
            counts = np.zeros(bins)
        else:
            counts = np.diff(np.interp(edges, points, values, left=0.0, right=float(cumulative[-1])))
            counts[0] += np.interp(edges[0], points, values, left=0.0)  # mass clipped onto the lowest edge
        return Histogram(
            counts,
            edges[:-1],
            edges[1:],
            "linear",
            self.low,
            self.high,
            self.mean,
            self.total,
            self.zeros,
            self.positives,
            self.non_finite,
        )


class ScanState:
    """The mergeable reductions of a scan, for every recorded layer at once.

    Per layer: a float-bit histogram of all its output values. Per unit (a channel, or a feature of a vector
    output), with the units of all layers side by side in one vector so that each batch costs a handful of
    tensor operations whatever the number of layers: the maximum over the dataset, the number of samples
    where the unit is positive somewhere (its activity), the sum of its spatially pooled values, and its top-k
    samples (:class:`~deepscope.units.topk.TopK`, by the unit's spatial maximum; positions are left at -1). The
    layer's maximum and mean follow exactly from the unit maxima and sums; its minimum to within a bin from
    the histogram. Per element this costs a shift, a mask and a bincount (histogram), a max and a mean (top-k
    and pooling), nothing else. Over the dataset: ``confusion[label, predicted]`` (int64; zero without labels).

    Use: :meth:`add_layer` from a forward hook for each layer of a batch, then :meth:`end_batch`.
    """

    # Samples whose per-unit values wait before they are folded in: bounds the waiting memory to
    # FOLD_ROWS x units floats (plus one batch) whatever the chunk size.
    FOLD_ROWS = 512

    def __init__(self, layers: Sequence[tuple[str, int]], classes: int, k: int, device: torch.device):
        self.names = [name for name, _ in layers]
        self.units = [int(units) for _, units in layers]
        self.offsets = np.concatenate([[0], np.cumsum(self.units)]).astype(int).tolist()
        self.classes = classes
        self.k = k
        self.device = device
        total = max(self.offsets[-1], 1)
        self.counts = torch.zeros(len(self.names), BINS, dtype=torch.int64, device=device)
        self.unit_max = torch.full((total,), float("-inf"), dtype=torch.float32, device=device)
        self.unit_active = torch.zeros(total, dtype=torch.int64, device=device)
        self.unit_sum = torch.zeros(total, dtype=torch.float64, device=device)
        self.topk = TopK(total, k, device=device)
        self.confusion = torch.zeros(classes, classes, dtype=torch.int64, device=device)
        self.samples = 0
        self._batch: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(self.names)
        self._waiting: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._waiting_rows = 0

    def add_layer(self, position: int, output: torch.Tensor, pooled: torch.Tensor) -> None:
        """One layer's output of the current batch in unit-first layout ``[B, U, *spatial]`` and its spatial
        mean ``[B, U]``."""
        values = output.detach()
        # The maximum without its position: finding the argmax costs several times more on CPU, and the
        # position of a unit's top samples can be found again later by running just those k samples.
        peak = values.amax(tuple(range(2, values.ndim))) if values.ndim > 2 else values
        # Counted at end_batch, so that a forward run again (another memory layout) replaces what it added.
        self._batch[position] = (peak.float(), pooled, float_histogram(values))

    def end_batch(self, sample_indices: torch.Tensor) -> None:
        """Close the batch (every layer must have been added). Its per-unit values ``[B, units]`` wait, and
        are folded into the reductions once ``FOLD_ROWS`` samples are waiting (or when the state is merged or
        saved): one top-k selection per chunk instead of one per batch. The result does not depend on the
        grouping, because the top-k order is total (value, then sample index) and max / counts are exact."""
        missing = [self.names[i] for i, entry in enumerate(self._batch) if entry is None]
        if missing:
            raise LayerNotFoundError(f"layers {missing} were not recorded in this batch")
        peaks = torch.cat([entry[0] for entry in self._batch], dim=1)
        pooled = torch.cat([entry[1] for entry in self._batch], dim=1)
        for position, entry in enumerate(self._batch):
            self.counts[position] += entry[2]
        self._batch = [None] * len(self.names)
        self._waiting.append((peaks, pooled, sample_indices))
        self._waiting_rows += int(peaks.shape[0])
        if self._waiting_rows >= self.FOLD_ROWS:
            self._fold()

    def _fold(self) -> None:
        if not self._waiting:
            return
        peaks = torch.cat([entry[0] for entry in self._waiting])
        pooled = torch.cat([entry[1] for entry in self._waiting])
        sample_indices = torch.cat([entry[2] for entry in self._waiting])
        self._waiting, self._waiting_rows = [], 0
        self.unit_max = torch.maximum(self.unit_max, peaks.amax(0))
        self.unit_active += (peaks > 0).sum(0)
        self.unit_sum += pooled.sum(0, dtype=torch.float64)
        self.topk.update(peaks, sample_indices)
        self.samples += int(peaks.shape[0])

    def update_predictions(self, predicted: torch.Tensor, labels: torch.Tensor | None) -> None:
        if labels is None:
            return
        known = labels >= 0
        flat = labels[known] * self.classes + predicted[known]
        self.confusion += torch.bincount(flat, minlength=self.classes * self.classes).view(
            self.classes, self.classes
        )

    def merge(self, other: ScanState) -> ScanState:
        """Fold in the reductions of other samples (another chunk, another actor)."""
        if other.names != self.names or other.units != self.units or other.classes != self.classes:
            raise SettingError("cannot merge the reductions of scans with different layers or classes")
        self._fold()
        other._fold()
        self.counts += other.counts.to(self.device)
        self.unit_max = torch.maximum(self.unit_max, other.unit_max.to(self.device))
        self.unit_active += other.unit_active.to(self.device)
        self.unit_sum += other.unit_sum.to(self.device)
        self.topk.merge(other.topk)
        self.confusion += other.confusion.to(self.device)
        self.samples += other.samples
        return self

    def state_dict(self) -> dict[str, np.ndarray]:
        """NumPy arrays, one set per layer (``layer<p>.<key>``; the format of docs/workspace.md)."""
        self._fold()
        topk = {key: value.cpu().numpy() for key, value in self.topk.state_dict().items()}
        unit_max, unit_active, unit_sum = (
            t.cpu().numpy() for t in (self.unit_max, self.unit_active, self.unit_sum)
        )
        counts = self.counts.cpu().numpy()
        state: dict[str, np.ndarray] = {
            "confusion": self.confusion.cpu().numpy(),
            "labelled": np.array(int(self.confusion.sum())),
            "scanned": np.array(self.samples),
        }
        for position in range(len(self.names)):
            rows = slice(self.offsets[position], self.offsets[position + 1])
            prefix = f"layer{position}."
            state[prefix + "counts"] = counts[position]
            state[prefix + "unit_max"] = unit_max[rows]
            state[prefix + "unit_active"] = unit_active[rows]
            state[prefix + "unit_sum"] = unit_sum[rows]
            state[prefix + "samples"] = np.array(self.samples)
            for key in ("values", "sample_indices", "positions"):
                state[f"{prefix}topk_{key}"] = topk[key][rows]
            state[prefix + "topk_seen"] = topk["seen"]
        return state

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, np.ndarray], layers: Sequence[tuple[str, int]], device: torch.device
    ) -> ScanState:
        confusion = np.asarray(state["confusion"])
        k = int(np.asarray(state["layer0.topk_values"]).shape[1])
        restored = cls(layers, confusion.shape[0], k, device)

        def joined(key: str) -> torch.Tensor:
            return torch.from_numpy(
                np.concatenate([np.asarray(state[f"layer{p}.{key}"]) for p in range(len(restored.names))])
            ).to(device)

        restored.counts = torch.from_numpy(
            np.stack([np.asarray(state[f"layer{p}.counts"]) for p in range(len(restored.names))])
        ).to(device)
        restored.unit_max, restored.unit_active, restored.unit_sum = (
            joined(key) for key in ("unit_max", "unit_active", "unit_sum")
        )
        restored.topk = TopK.from_state_dict(
            {
                "values": joined("topk_values"),
                "sample_indices": joined("topk_sample_indices"),
                "positions": joined("topk_positions"),
                "seen": torch.tensor(int(state["layer0.topk_seen"])),
            },
            device=device,
        )
        restored.confusion = torch.from_numpy(confusion.copy()).to(device)
        restored.samples = int(state["scanned"])
        return restored


def histogram_from_state(state: Mapping[str, np.ndarray]) -> Histogram:
    """The non-empty float-bit bins of a stored layer (``layer<p>.*`` keys of :meth:`ScanState.state_dict`,
    prefix removed) as a :class:`Histogram` (``high`` and ``mean`` exact, ``low`` the lower edge of the lowest
    non-empty bin).

    >>> state = ScanState([("layer", 2)], classes=1, k=1, device=torch.device("cpu"))
    >>> output = torch.tensor([[[0.0, 1.0], [3.0, -1.0]]])  # one sample, 2 units of 2 values
    >>> state.add_layer(0, output, output.mean(2))
    >>> state.end_batch(torch.tensor([0]))
    >>> stored = state.state_dict()
    >>> layer = {key.removeprefix("layer0."): value for key, value in stored.items() if key.startswith("layer0.")}
    >>> histogram = histogram_from_state(layer)
    >>> histogram.total, histogram.zeros, histogram.low, histogram.high, histogram.mean
    (4, 1, -1.125, 3.0, 0.75)
    """
    counts = np.asarray(state["counts"]).astype(np.int64)
    edges = bin_edges()
    code = np.arange(BINS) % _HALF
    finite = code < _EXPONENT_MAX
    zeros = int(counts[0] + counts[_HALF])
    tiny = float(edges[0, 1])
    chosen = np.flatnonzero(finite & (counts > 0) & (code != 0))
    lower, upper, kept = list(edges[chosen, 0]), list(edges[chosen, 1]), list(counts[chosen])
    if zeros:
        lower.append(-tiny)
        upper.append(tiny)
        kept.append(zeros)
    order = np.argsort(lower, kind="stable")
    lower_sorted = np.asarray(lower, dtype=np.float64)[order]
    unit_max = np.asarray(state["unit_max"], dtype=np.float64)
    units, samples = len(unit_max), int(state["samples"])
    empty = units == 0 or samples == 0
    low = float("nan") if len(lower_sorted) == 0 else float(lower_sorted[0])
    if zeros and len(lower_sorted) and lower_sorted[0] == -tiny:
        low = 0.0  # nothing below zero: the minimum is an exact zero
    return Histogram(
        np.asarray(kept, dtype=np.int64)[order],
        lower_sorted,
        np.asarray(upper, dtype=np.float64)[order],
        "log",
        low,
        float("nan") if empty else float(unit_max.max()),
        float("nan") if empty else float(np.sum(state["unit_sum"])) / (units * samples),
        int(counts.sum()),
        zeros,
        int(counts[finite & (code != 0) & (np.arange(BINS) < _HALF)].sum()),
        int(counts[~finite].sum()),
    )
