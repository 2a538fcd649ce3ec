"""Atlas pictures: confusion matrices, heat maps (CKA), histogram small multiples, scatter plots and thumbnail
grids. Matplotlib figures are made without pyplot (no global state) and returned as PIL images."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from deepscope.render.images import tile


def _to_image(figure: Figure) -> Image.Image:
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return Image.frombuffer("RGBA", canvas.get_width_height(), canvas.buffer_rgba()).convert("RGB")


def heatmap_image(
    matrix: np.ndarray,
    rows: Sequence[str],
    columns: Sequence[str],
    title: str = "",
    *,
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
    cmap: str = "viridis",
    xlabel: str = "",
    ylabel: str = "",
    size: float = 4.5,
) -> Image.Image:
    """A labeled heat map of ``matrix`` (e.g. CKA between layers); cells are annotated when small enough.

    >>> heatmap_image(np.eye(2), ["a", "b"], ["c", "d"]).mode
    'RGB'
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    annotate = matrix.size <= 144 if annotate is None else annotate
    figure = Figure(figsize=(size + 1.2, size), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    shown = axes.imshow(matrix, vmin=vmin, vmax=vmax, cmap=cmap)
    axes.set_xticks(range(len(columns)), list(columns), rotation=60, ha="right", fontsize=8)
    axes.set_yticks(range(len(rows)), list(rows), fontsize=8)
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title, fontsize=10)
    figure.colorbar(shown, ax=axes, shrink=0.8)
    if annotate:
        low, high = shown.get_clim()
        for (i, j), value in np.ndenumerate(matrix):
            if np.isfinite(value):
                bright = (value - low) / ((high - low) or 1) > 0.6
                text = f"{value:.2f}" if not float(value).is_integer() else f"{int(value)}"
                axes.text(
                    j, i, text, ha="center", va="center", fontsize=7, color="black" if bright else "white"
                )
    return _to_image(figure)


def confusion_image(confusion: np.ndarray, classes: Sequence[str], title: str = "") -> Image.Image:
    """A confusion matrix (rows: true class, columns: predicted), colored by row-normalized rate, annotated
    with counts when it has at most 20 classes.

    >>> confusion_image(np.array([[5, 1], [0, 4]]), ["cat", "dog"]).mode
    'RGB'
    """
    confusion = np.asarray(confusion)
    rates = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    figure = Figure(figsize=(4.8, 4.2), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    shown = axes.imshow(rates, vmin=0, vmax=1, cmap="Blues")
    ticks = range(len(classes)) if len(classes) <= 30 else []
    axes.set_xticks(ticks, [classes[i] for i in ticks], rotation=60 if len(classes) > 12 else 0, fontsize=8)
    axes.set_yticks(ticks, [classes[i] for i in ticks], fontsize=8)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    if title:
        axes.set_title(title, fontsize=10)
    figure.colorbar(shown, ax=axes, shrink=0.8, label="fraction of the true class")
    if len(classes) <= 20:
        for (i, j), count in np.ndenumerate(confusion):
            if count:
                axes.text(
                    j,
                    i,
                    str(count),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black",
                )
    return _to_image(figure)


def histograms_image(
    histograms: Mapping[str, object], title: str = "", columns: int = 3, bins: int = 60, log: bool = True
) -> Image.Image:
    """Small multiples of :class:`~deepscope.atlas.Histogram` s (rebinned to ``bins`` linear bins over each
    one's exact range); each panel notes the fraction of exact zeros and of positive values."""
    names = list(histograms)
    rows = max(1, math.ceil(len(names) / columns))
    figure = Figure(
        figsize=(3.3 * columns, 2.2 * rows + (0.3 if title else 0)), dpi=100, layout="constrained"
    )
    if title:
        figure.suptitle(title, fontsize=11)
    for position, name in enumerate(names):
        histogram = histograms[name]
        axes = figure.add_subplot(rows, columns, position + 1)
        linear = (
            histogram.rebin(bins)
            if histogram.kind != "linear" or len(histogram.counts) != bins
            else histogram
        )
        widths = linear.upper - linear.lower
        axes.bar(linear.lower, linear.counts, width=widths, align="edge", color="#4a78b5", linewidth=0)
        if log:
            axes.set_yscale("log")
        axes.set_title(name, fontsize=9)
        axes.tick_params(labelsize=7)
        axes.text(
            0.98,
            0.95,
            f"zeros {histogram.zero_fraction:.0%}\n> 0 {histogram.positive_fraction:.0%}",
            transform=axes.transAxes,
            ha="right",
            va="top",
            fontsize=7,
        )
    return _to_image(figure)


def scatter_image(
    points: np.ndarray,
    labels: np.ndarray | None = None,
    classes: Sequence[str] | None = None,
    title: str = "",
) -> Image.Image:
    """A 2-D layout colored by label (tab10 / tab20), with a legend when there are at most 20 classes."""
    points = np.asarray(points)
    figure = Figure(figsize=(5, 4.6), dpi=100, layout="constrained")
    axes = figure.add_subplot()
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=3, color="#4a78b5")
    else:
        values = np.unique(labels)
        cmap = "tab10" if len(values) <= 10 else "tab20"
        shown = axes.scatter(
            points[:, 0], points[:, 1], s=3, c=labels, cmap=cmap, vmin=0, vmax=max(values.max(), 9)
        )
        if len(values) <= 20:
            handles, _ = shown.legend_elements(num=list(values))
            names = [classes[v] if classes is not None else str(v) for v in values]
            axes.legend(handles, names, fontsize=7, markerscale=0.8, loc="best", framealpha=0.6)
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=10)
    return _to_image(figure)


def grid_image(thumbnails: np.ndarray, cells: np.ndarray, scale: int = 1, pad: int = 0) -> Image.Image:
    """Thumbnails ``uint8 [N, h, w, c]`` placed on a grid: ``cells[r, c]`` is the thumbnail shown there (-1 blank).

    >>> grid_image(np.zeros((2, 4, 4, 1), np.uint8), np.array([[0, -1], [1, 0]])).size
    (8, 8)
    """
    rows, columns = cells.shape
    _, height, width, channels = thumbnails.shape
    pictures = torch.ones(rows * columns, channels, height, width)
    flat = cells.ravel()
    placed = flat >= 0
    pictures[torch.from_numpy(placed)] = (
        torch.from_numpy(np.ascontiguousarray(thumbnails[flat[placed]])).permute(0, 3, 1, 2).float() / 255
    )
    return tile(pictures, columns=columns, pad=pad, scale=scale)
