"""Model quality from a scan: per-class precision / recall / F1, the most-confused class pairs with their
samples, and weight histograms per layer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from deepscope.atlas.scanning.reductions import Histogram
from deepscope.errors import SettingError
from deepscope.zoo.vision_model import VisionModel, as_vision_model


@dataclass(frozen=True)
class ClassReport:
    """Per-class ``precision``, ``recall``, ``f1`` (float64, NaN where undefined: no prediction of the class,
    or no sample of it) and ``support`` (samples whose label is the class), from a confusion matrix whose rows
    are labels and columns predictions."""

    classes: list[str]
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray

    @property
    def accuracy(self) -> float:
        total = self.support.sum()
        return float(np.nansum(self.recall * self.support) / total) if total else float("nan")

    def __str__(self) -> str:
        """A table in the manner of scikit-learn's ``classification_report``: a row per class, then the
        accuracy over every labelled sample."""
        width = max(8, *(len(name) for name in self.classes))
        rows = [f"{'class':>{width}}  precision  recall      f1  support"]
        for name, precision, recall, f1, support in zip(
            self.classes, self.precision, self.recall, self.f1, self.support, strict=True
        ):
            rows.append(f"{name:>{width}}  {precision:9.3f}  {recall:6.3f}  {f1:6.3f}  {support:7d}")
        rows.append(f"{'accuracy':>{width}}  {'':9}  {'':6}  {self.accuracy:6.3f}  {self.support.sum():7d}")
        return "\n".join(rows)

    def to_pandas(self):
        """The report as a DataFrame indexed by class name (needs pandas)."""
        import pandas as pd

        return pd.DataFrame(
            {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support},
            index=pd.Index(self.classes, name="class"),
        )


def class_report(confusion: np.ndarray, classes: Sequence[str] | None = None) -> ClassReport:
    """Precision, recall and F1 of each class from ``confusion[label, predicted]`` counts.

    >>> import numpy as np
    >>> report = class_report(np.array([[3, 1], [0, 2]]))
    >>> report.precision.tolist(), report.recall.tolist()
    ([1.0, 0.6666666666666666], [0.75, 1.0])
    """
    confusion = np.asarray(confusion, dtype=np.int64)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise SettingError(f"confusion must be a square matrix, got shape {confusion.shape}")
    hits = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(0).astype(np.float64)
    support = confusion.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, hits / predicted, np.nan)
        recall = np.where(support > 0, hits / support, np.nan)
        f1 = np.where((predicted + support) > 0, 2 * hits / (predicted + support.astype(np.float64)), np.nan)
    names = list(classes) if classes is not None else [str(i) for i in range(len(hits))]
    return ClassReport(names, precision, recall, f1, support)


@dataclass(frozen=True)
class ConfusedPair:
    """Samples of class ``label`` predicted as ``predicted``: how many, and their dataset indices, the most
    confident mistakes first."""

    label: int
    predicted: int
    count: int
    samples: np.ndarray


def most_confused(
    confusion: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray,
    probabilities: np.ndarray,
    indices: np.ndarray,
    n: int = 10,
    samples: int = 8,
) -> list[ConfusedPair]:
    """The ``n`` largest off-diagonal cells of the confusion matrix (ties: lower label, then lower predicted
    class first), each with up to ``samples`` dataset indices ranked by the probability given to the wrong class.

    >>> import numpy as np
    >>> pairs = most_confused(np.array([[1, 2], [0, 1]]), np.array([0, 0, 0, 1]), np.array([0, 1, 1, 1]),
    ...                       np.array([[.9, .1], [.3, .7], [.4, .6], [.2, .8]]), np.arange(4))
    >>> (pairs[0].label, pairs[0].predicted, pairs[0].count, pairs[0].samples.tolist())
    (0, 1, 2, [1, 2])
    """
    confusion = np.asarray(confusion)
    off = confusion.copy()
    np.fill_diagonal(off, 0)
    order = np.lexsort((np.arange(off.size), -off.ravel()))
    pairs = []
    for flat in order[:n]:
        label, predicted = divmod(int(flat), off.shape[1])
        count = int(off[label, predicted])
        if count == 0:
            break
        rows = np.flatnonzero((labels == label) & (predictions == predicted))
        ranked = rows[np.argsort(-probabilities[rows, predicted], kind="stable")][:samples]
        pairs.append(ConfusedPair(label, predicted, count, np.asarray(indices)[ranked]))
    return pairs


def weight_histograms(model: VisionModel | nn.Module, bins: int = 64) -> dict[str, Histogram]:
    """A linear histogram of the ``weight`` of each layer that has one of its own (``bins`` equal bins between its exact
    minimum and maximum), keyed by layer name. Weights are known up front, so exact ranges are used.

    >>> import deepscope as ds
    >>> h = weight_histograms(ds.load_model("zoo:lenet_mnist"))["conv1"]
    >>> int(h.counts.sum()), len(h.counts)
    (150, 64)
    """
    module = as_vision_model(model).module
    histograms = {}
    for name, sub in module.named_modules():
        weight = sub._parameters.get("weight") if name else None
        if not isinstance(weight, torch.Tensor):
            continue
        values = weight.detach().float().flatten()
        if values.numel() == 0:
            continue
        low, high = (float(v) for v in torch.aminmax(values))
        top = high if high > low else low + 1.0
        counts = torch.histc(values, bins=bins, min=low, max=top).to(torch.int64).cpu().numpy()
        edges = np.linspace(low, top, bins + 1)
        total = values.numel()
        # count_nonzero and NumPy's float64 sum: over ResNet-18's 11M weights a bool tensor's .sum() and torch's
        # float64 sum each take about 30 ms, these 3 and 7 ms.
        histograms[name] = Histogram(
            counts,
            edges[:-1],
            edges[1:],
            "linear",
            low,
            high,
            float(np.add.reduce(values.cpu().numpy(), dtype=np.float64)) / total,
            total,
            total - int(torch.count_nonzero(values)),
            int(torch.count_nonzero(values > 0)),
            0,
        )
    return histograms


# What weights.npz keeps of a linear histogram besides its counts and edges: '<layer>/stats' holds these, in order.
STORED_STATISTICS = ("low", "high", "mean", "total", "zeros", "positives")


def save_weight_histograms(path: str | Path, histograms: Mapping[str, Histogram]) -> None:
    """Store linear histograms (of :func:`weight_histograms`) in an .npz: per layer ``<layer>/counts``,
    ``<layer>/edges`` and ``<layer>/stats`` (:data:`STORED_STATISTICS`), the format of docs/workspace.md.

    >>> import tempfile, pathlib, deepscope as ds
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "weights.npz"
    >>> save_weight_histograms(path, weight_histograms(ds.load_model("zoo:lenet_mnist")))
    >>> load_weight_histograms(path)["fc1"].total
    48000
    """
    arrays = {}
    for name, histogram in histograms.items():
        arrays[f"{name}/counts"] = histogram.counts
        arrays[f"{name}/edges"] = np.append(histogram.lower, histogram.upper[-1:])
        arrays[f"{name}/stats"] = np.array([getattr(histogram, key) for key in STORED_STATISTICS])
    np.savez(path, **arrays)


def load_weight_histograms(path: str | Path) -> dict[str, Histogram]:
    """The linear histograms :func:`save_weight_histograms` stored, by layer name (see its example)."""
    histograms = {}
    with np.load(path) as archive:
        names = list(dict.fromkeys(key.rsplit("/", 1)[0] for key in archive.files))
        for name in names:
            counts, edges = archive[f"{name}/counts"], archive[f"{name}/edges"]
            stats = dict(zip(STORED_STATISTICS, archive[f"{name}/stats"].tolist(), strict=True))
            histograms[name] = Histogram(
                counts,
                edges[:-1],
                edges[1:],
                "linear",
                low=stats["low"],
                high=stats["high"],
                mean=stats["mean"],
                total=int(stats["total"]),
                zeros=int(stats["zeros"]),
                positives=int(stats["positives"]),
            )
    return histograms
