"""Atlas pictures: confusion matrices, heat maps (CKA), histogram small multiples, scatter plots and thumbnail
grids. Matplotlib figures are made without pyplot (no global state) and returned as PIL images."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
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


def _class_colors(count: int) -> list:
    from matplotlib import colormaps

    palette = colormaps["tab10" if count <= 10 else "tab20"]
    return [palette(i % palette.N) for i in range(count)]


def selectivity_image(
    selectivity: object, units: Sequence[int] | None = None, columns: int = 4, title: str = ""
) -> Image.Image:
    """Per-class activation histograms of chosen units of a :class:`~deepscope.atlas.Selectivity` (Sun et al.
    2015's view): one panel per unit, one line per class (the share of that class's samples in each bin, so
    classes of different sizes compare; on a square-root axis, so that the tails stay visible next to the
    peak of a ReLU unit's zeros), titled with the unit's class selectivity index and preferred class.
    ``units`` default to the 8 most selective.

    >>> import numpy as np, deepscope as ds
    >>> values = np.array([[2.0, 1.0], [4.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    >>> result = ds.atlas.class_selectivity(values, np.array([0, 0, 1, 1]), ["a", "b"])
    >>> selectivity_image(result, units=[0, 1]).mode
    'RGB'
    """
    chosen = list(selectivity.most_selective(8) if units is None else units)
    if not chosen:
        chosen = list(range(min(8, len(selectivity.index))))
    classes = selectivity.classes
    present = np.flatnonzero(selectivity.class_counts > 0)
    colors = _class_colors(len(classes))
    rows = max(1, math.ceil(len(chosen) / columns))
    width = min(columns, max(len(chosen), 1))
    figure = Figure(
        figsize=(3.0 * width + 1.2, 2.2 * rows + (0.3 if title else 0)), dpi=100, layout="constrained"
    )
    if title:
        figure.suptitle(title, fontsize=11)
    for position, unit in enumerate(chosen):
        axes = figure.add_subplot(rows, width, position + 1)
        edges = selectivity.edges[unit]
        centers = (edges[:-1] + edges[1:]) / 2
        for label in present:
            share = selectivity.histograms[unit, label] / selectivity.class_counts[label]
            axes.plot(
                centers,
                share,
                drawstyle="steps-mid",
                color=colors[label],
                linewidth=1.1,
                label=classes[label],
            )
        index = selectivity.index[unit]
        described = "undefined" if np.isnan(index) else f"{index:.2f}"
        axes.set_title(
            f"unit {unit}: index {described}, prefers {classes[selectivity.preferred[unit]]}", fontsize=8
        )
        axes.set_yscale("function", functions=(np.sqrt, np.square))
        axes.set_ylim(0, 1)
        axes.tick_params(labelsize=7)
        axes.set_xlabel("pooled activation", fontsize=7)
        if position % width == 0:
            axes.set_ylabel("share of the class", fontsize=7)
    if len(present) <= 20:
        figure.legend(
            *figure.axes[0].get_legend_handles_labels(), loc="outside right center", fontsize=7, title="class"
        )
    return _to_image(figure)


def selectivity_summary_image(selectivity: object, title: str = "") -> Image.Image:
    """A layer's class selectivity at a glance: the distribution of the index over its units (undefined ones
    counted apart), how many respond to one class only and to every class, and how many units prefer each class.

    >>> import numpy as np, deepscope as ds
    >>> values = np.array([[2.0, 1.0], [4.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    >>> selectivity_summary_image(ds.atlas.class_selectivity(values, np.array([0, 0, 1, 1]), ["a", "b"])).mode
    'RGB'
    """
    summary = selectivity.summary()
    figure = Figure(figsize=(8.4, 2.8), dpi=100, layout="constrained")
    figure.suptitle(title or f"class selectivity of {selectivity.layer}", fontsize=11)
    spread, preferred = figure.subplots(1, 2, width_ratios=[1.2, 1])
    defined = selectivity.index[selectivity.defined]
    spread.hist(defined, bins=20, range=(0, 1), color="#4a78b5")
    spread.set_xlabel("class selectivity index (0: every class alike, 1: one class only)", fontsize=8)
    spread.set_ylabel("units", fontsize=8)
    spread.tick_params(labelsize=7)
    spread.text(
        0.98,
        0.95,
        f"{summary['defined']} of {summary['units']} units defined\nmean {summary['mean_index']:.2f}\n"
        f"one class only: {summary['one_class']}\nevery class: {summary['all_classes']}",
        transform=spread.transAxes,
        ha="right",
        va="top",
        fontsize=7,
    )
    counts = np.bincount(selectivity.preferred[selectivity.defined], minlength=len(selectivity.classes))
    shown = np.flatnonzero(selectivity.class_counts > 0)
    preferred.bar(
        range(len(shown)), counts[shown], color=[_class_colors(len(selectivity.classes))[c] for c in shown]
    )
    ticks = range(len(shown)) if len(shown) <= 30 else []
    preferred.set_xticks(
        ticks,
        [selectivity.classes[shown[i]] for i in ticks],
        rotation=60 if len(shown) > 12 else 0,
        fontsize=7,
    )
    preferred.set_ylabel("units preferring it", fontsize=8)
    preferred.tick_params(labelsize=7)
    return _to_image(figure)


def layer_comparison_image(
    comparison: object, labels: np.ndarray | None = None, classes: Sequence[str] | None = None
) -> Image.Image:
    """Two networks layer by layer (Yu et al. 2016), from a :class:`~deepscope.atlas.Comparison`: a row of 2-D
    layouts per network, one panel per layer, colored by label, when the comparison has layouts; below, each
    layer's sparsity (fraction of output values not above zero) as bars, network A and B side by side.

    >>> import numpy as np, deepscope as ds, tempfile
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", ds.datasets.mnist5k("test").subset(range(60)), ["fc1", "fc2"],
    ...                    out=tempfile.mkdtemp(), thumbnail_size=0)
    >>> layer_comparison_image(ds.atlas.compare(ws, ws, layout="pca"), ws.labels).mode
    'RGB'
    """
    layers_a, layers_b = list(comparison.layers_a), list(comparison.layers_b)
    with_layouts = comparison.layouts_a is not None
    columns = max(len(layers_a), len(layers_b), 1)
    layout_rows = 2 if with_layouts else 0
    figure = Figure(figsize=(max(2.1 * columns, 7.0), 2.2 * layout_rows + 2.8), dpi=100, layout="constrained")
    grid = figure.add_gridspec(layout_rows + 1, columns, height_ratios=[1.0] * layout_rows + [1.25])
    if with_layouts:
        values = None if labels is None else np.asarray(labels)
        colors = None
        if values is not None:
            palette = _class_colors(max(int(values.max()) + 1, 1))
            colors = [palette[v] if v >= 0 else (0.6, 0.6, 0.6, 1.0) for v in values]
        for row, (side, names, layouts) in enumerate(
            (("A", layers_a, comparison.layouts_a), ("B", layers_b, comparison.layouts_b))
        ):
            for column, (name, points) in enumerate(zip(names, layouts, strict=True)):
                axes = figure.add_subplot(grid[row, column])
                axes.scatter(points[:, 0], points[:, 1], s=2, c=colors if colors is not None else "#4a78b5")
                axes.set_xticks([])
                axes.set_yticks([])
                axes.set_title(f"{side}: {name}", fontsize=8)
        present = [] if values is None or classes is None else np.unique(values[values >= 0]).tolist()
        if 0 < len(present) <= 20:
            handles = [
                Line2D([], [], marker="o", linestyle="", markersize=4, color=palette[v]) for v in present
            ]
            figure.legend(
                handles, [classes[v] for v in present], loc="outside right upper", fontsize=7, title="label"
            )
    bars = figure.add_subplot(grid[layout_rows, :])
    width = 0.4
    bars.bar(np.arange(len(layers_a)) - width / 2, comparison.sparsity_a, width, label="A", color="#4a78b5")
    bars.bar(np.arange(len(layers_b)) + width / 2, comparison.sparsity_b, width, label="B", color="#d9822b")
    names = [
        f"{a}\n{b}" if a != b else a
        for a, b in zip(
            layers_a + [""] * (columns - len(layers_a)),
            layers_b + [""] * (columns - len(layers_b)),
            strict=True,
        )
    ]
    bars.set_xticks(range(columns), names, fontsize=7)
    bars.set_ylim(0, 1)
    bars.set_ylabel("sparsity (values <= 0)", fontsize=8)
    bars.tick_params(labelsize=7)
    bars.legend(fontsize=7)
    return _to_image(figure)
