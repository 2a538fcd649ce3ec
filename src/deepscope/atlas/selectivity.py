"""Class selectivity of units: per unit, the distribution of its activation in each class and one number for
how much it prefers one class.

Sun, Wang & Tang ("Deeply learned face representations are sparse, selective, and robust", CVPR 2015, DeepID2+)
show each neuron's activation histograms over the images of one identity or attribute against the rest, and
find neurons that respond to one class and stay silent on the others. They give no formula for a selectivity
index, so the index here is the class selectivity index of Morcos, Barrett, Rabinowitz & Botvinick ("On the
importance of single directions for generalization", ICLR 2018, section 2.4):

    selectivity = (mu_max - mu_rest) / (mu_max + mu_rest)

where, for one unit, ``mu_max`` is its highest class-conditional mean activity and ``mu_rest`` the mean of its
class-conditional means over every other class (each class weighs the same, whatever its number of samples).
A unit's activity on a sample is its pooled activation as the scan stores it (the spatial mean of a channel,
as Morcos et al. average a feature map). The index is 0 for a unit that responds the same to every class and
1 for a unit that responds to one class only (``mu_rest = 0``). It assumes non-negative activities (ReLU
outputs): where a unit has a negative class mean (a pre-activation) or every class mean is 0 (a dead unit), its
index is NaN. Classes without samples in the data take no part.

Everything is computed from the pooled activations and labels a scan stores per sample: no extra pass and no
extra scan reduction (the per-class sums and histograms follow exactly from those rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from deepscope.errors import SettingError, SettingTypeError

# Rows binned at once: bounds the temporary bin indices to about 32 MiB whatever the dataset's size.
HISTOGRAM_ELEMENTS = 1 << 22


def selectivity_index(class_means: np.ndarray) -> np.ndarray:
    """The class selectivity index (Morcos et al. 2018; see the module docstring) of each unit from its
    class-conditional mean activities ``[units, classes]`` (NaN columns: classes without samples, left out):
    ``(mu_max - mu_rest) / (mu_max + mu_rest)``, NaN where a class mean is negative or all are zero.

    >>> selectivity_index(np.array([[3.0, 1.0, 1.0], [2.0, 0.0, 0.0], [1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))
    array([0.5, 1. , 0. , nan])
    """
    means = np.asarray(class_means, dtype=np.float64)
    if means.ndim != 2:
        raise SettingError(f"class_means must be [units, classes], got shape {means.shape}")
    present = ~np.isnan(means).all(0)
    if int(present.sum()) < 2:
        raise SettingError(
            f"the selectivity index compares classes: it needs samples of at least 2, got {int(present.sum())}"
        )
    means = means[:, present]
    best = means.max(1)
    rest = (means.sum(1) - best) / (means.shape[1] - 1)
    total = best + rest
    defined = (means >= 0).all(1) & (total > 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(defined, (best - rest) / total, np.nan)


@dataclass(frozen=True)
class Selectivity:
    """The class selectivity of every unit of one layer over a scanned dataset.

    - ``class_counts`` ``[classes]``: labeled samples per class;
    - ``class_means`` ``[units, classes]``: each unit's mean pooled activation per class (NaN: no samples);
    - ``index`` ``[units]``: the class selectivity index (see :func:`selectivity_index`; NaN where undefined);
    - ``preferred`` ``[units]``: the class with the highest mean;
    - ``responsive`` ``[units, classes]``: the classes a unit responds to, those whose mean is at least
      ``threshold`` times its highest class mean (all False where the index is undefined);
    - ``edges`` ``[units, bins + 1]`` and ``histograms`` ``[units, classes, bins]``: per unit, the counts of its
      pooled activations per class in equal bins over the unit's range (a constant unit has every value in its
      first bin, over ``[value, value + 1]``).
    """

    layer: str
    classes: list[str]
    class_counts: np.ndarray
    class_means: np.ndarray
    index: np.ndarray
    preferred: np.ndarray
    responsive: np.ndarray
    threshold: float
    edges: np.ndarray
    histograms: np.ndarray

    @property
    def defined(self) -> np.ndarray:
        """Mask of the units whose index is defined (non-negative class means, not all zero)."""
        return ~np.isnan(self.index)

    @property
    def one_class_units(self) -> np.ndarray:
        """The units that respond to one class only (``responsive`` holds one class)."""
        return np.flatnonzero(self.responsive.sum(1) == 1)

    @property
    def all_class_units(self) -> np.ndarray:
        """The units that respond to every class present in the data."""
        present = int((self.class_counts > 0).sum())
        return np.flatnonzero(self.defined & (self.responsive.sum(1) == present))

    def most_selective(self, n: int = 8) -> np.ndarray:
        """The ``n`` units with the highest defined index, most selective first (ties: lower unit first)."""
        defined = np.flatnonzero(self.defined)
        order = np.lexsort((defined, -self.index[defined]))
        return defined[order[:n]]

    def summary(self) -> dict[str, float | int]:
        """The layer at a glance: units, units with a defined index, the mean and median index over those,
        how many respond to one class only and how many to every class."""
        defined = self.index[self.defined]
        return {
            "units": len(self.index),
            "defined": int(defined.size),
            "mean_index": float(defined.mean()) if defined.size else float("nan"),
            "median_index": float(np.median(defined)) if defined.size else float("nan"),
            "one_class": int(self.one_class_units.size),
            "all_classes": int(self.all_class_units.size),
        }


def class_selectivity(
    activations: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    layer: str = "",
    *,
    bins: int = 20,
    threshold: float = 0.5,
) -> Selectivity:
    """The :class:`Selectivity` of the units of one layer from its pooled activations ``[samples, units]`` and the
    samples' ``labels`` (``-1``: unlabeled, left out) over ``classes``.

    >>> activations = np.array([[2.0, 1.0], [4.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    >>> result = class_selectivity(activations, np.array([0, 0, 1, 1]), ["a", "b"], bins=2)
    >>> result.index.tolist(), result.class_means[0].tolist(), result.histograms[0].tolist()
    ([1.0, 0.0], [3.0, 0.0], [[0, 2], [2, 0]])
    """
    if isinstance(bins, bool) or not isinstance(bins, int):
        raise SettingTypeError(f"bins must be a positive int, got {bins!r}")
    if bins < 1:
        raise SettingError(f"bins must be a positive int, got {bins!r}")
    if not 0 < threshold <= 1:
        raise SettingError(
            f"threshold must be in (0, 1] (a fraction of the highest class mean), got {threshold}"
        )
    values = np.asarray(activations, dtype=np.float64)
    labels = np.asarray(labels)
    if values.ndim != 2 or labels.shape != (values.shape[0],):
        raise SettingError(
            f"expected activations [samples, units] and one label per sample, got {values.shape} and {labels.shape}"
        )
    count = len(classes)
    if labels.size and (labels.min() < -1 or labels.max() >= count):
        raise SettingError(f"labels must be -1 (none) or class indices below {count}")
    if not np.isfinite(values).all():
        raise SettingError(f"the activations of layer {layer!r} hold NaN or infinite values")
    known = labels >= 0
    values, labels = values[known], labels[known].astype(np.int64)
    units = values.shape[1]
    class_counts = np.bincount(labels, minlength=count)
    sums = np.zeros((count, units))
    present = np.flatnonzero(class_counts)
    if present.size:
        # Rows sorted by class, then one sum per class (np.add.at would add row by row).
        order = np.argsort(labels, kind="stable")
        starts = np.concatenate([[0], np.cumsum(class_counts[present])[:-1]])
        sums[present] = np.add.reduceat(values[order], starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        class_means = (sums / class_counts[:, None]).T
    class_means[:, class_counts == 0] = np.nan
    index = selectivity_index(class_means)
    ranked = np.where(np.isnan(class_means), -np.inf, class_means)
    preferred = ranked.argmax(1)
    best = ranked.max(1, keepdims=True)
    responsive = (ranked >= threshold * best) & ~np.isnan(index)[:, None]
    edges, histograms = _class_histograms(values, labels, count, bins)
    return Selectivity(
        layer,
        list(classes),
        class_counts,
        class_means,
        index,
        preferred,
        responsive,
        threshold,
        edges,
        histograms,
    )


def _class_histograms(
    values: np.ndarray, labels: np.ndarray, classes: int, bins: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per unit, equal bins over its range and the counts of each class's values in them: ``[units, bins + 1]``
    and ``[units, classes, bins]``, by one bincount per block of rows."""
    samples, units = values.shape
    low = values.min(0) if samples else np.zeros(units)
    high = values.max(0) if samples else np.ones(units)
    span = np.where(high > low, high - low, 1.0)
    edges = low[:, None] + span[:, None] * np.linspace(0.0, 1.0, bins + 1)[None, :]
    counts = np.zeros(units * classes * bins, dtype=np.int64)
    offsets = np.arange(units) * (classes * bins)
    step = max(1, HISTOGRAM_ELEMENTS // max(units, 1))
    for start in range(0, samples, step):
        block = values[start : start + step]
        position = np.clip(((block - low) / span * bins).astype(np.int64), 0, bins - 1)
        flat = offsets[None, :] + labels[start : start + step, None] * bins + position
        counts += np.bincount(flat.ravel(), minlength=counts.size)
    return edges, counts.reshape(units, classes, bins)
