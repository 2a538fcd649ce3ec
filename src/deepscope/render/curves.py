"""Plots of heat-map metrics: perturbation curves per method and similarity across randomized layers."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from PIL import Image


def _figure(width: float = 5.6, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110)
    return figure, figure.add_subplot(1, 1, 1)


def _picture(figure: Any) -> Image.Image:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png")
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def curve_plot(
    curves: Mapping[str, Any],
    title: str = "",
    higher_is_better: bool | None = None,
    ylabel: str = "target score",
) -> Image.Image:
    """Mean curve per method (a :class:`deepscope.metrics.Curve` each) with a band of +-1 standard error.

    >>> import torch
    >>> from deepscope.metrics import Curve
    >>> curve = Curve(torch.tensor([[1.0, 0.5, 0.1], [1.0, 0.7, 0.2]]), torch.tensor([0.0, 0.5, 1.0]), "morf")
    >>> curve_plot({"a map": curve}, "deletion").size[0] > 300
    True
    """
    figure, axes = _figure()
    for name, curve in curves.items():
        values = curve.curve.detach().double().cpu()
        fractions = curve.fractions.detach().double().cpu().numpy()
        mean = values.nanmean(0).numpy()
        sem = (values.std(0) / max(values.shape[0], 1) ** 0.5).numpy() if values.shape[0] > 1 else 0 * mean
        summary = _summary(curve, title)
        (line,) = axes.plot(fractions, mean, label=f"{name} ({summary})", linewidth=1.6)
        axes.fill_between(fractions, mean - sem, mean + sem, color=line.get_color(), alpha=0.15, linewidth=0)
    axes.set_xlabel("fraction perturbed" if "insertion" not in title else "fraction inserted")
    axes.set_ylabel(ylabel)
    if title:
        direction = (
            ""
            if higher_is_better is None
            else (" (higher is better)" if higher_is_better else " (lower is better)")
        )
        axes.set_title(title + direction, fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return _picture(figure)


def _summary(curve: Any, title: str) -> str:
    if "deletion" in title or "insertion" in title:
        return f"AUC {curve.auc.nanmean().item():.3f}"
    return f"AOPC {curve.aopc.nanmean().item():.3g}"


def randomization_plot(results: Mapping[str, Any], measure: str | None = None) -> Image.Image:
    """Similarity to the trained model's maps after each randomization step, mean over samples, per method
    (one :class:`deepscope.metrics.Randomization` each)."""
    figure, axes = _figure(6.4, 3.8)
    layers: list[str] = []
    for name, result in results.items():
        chosen = measure or next(iter(result.similarity))
        values = result.similarity[chosen].double()
        mean = values.nanmean(0).numpy()
        layers = result.layers
        axes.plot(range(len(layers)), mean, marker="o", markersize=3, label=name, linewidth=1.4)
    axes.axhline(0, color="#888", linewidth=0.8)
    axes.set_xticks(range(len(layers)))
    axes.set_xticklabels(layers, rotation=60, ha="right", fontsize=7)
    first = next(iter(results.values()))
    chosen = measure or next(iter(first.similarity))
    axes.set_ylabel(f"{chosen} to trained maps")
    axes.set_title(f"{first.order} randomization (lower = the map depends on the weights)", fontsize=10)
    axes.set_ylim(min(-0.1, axes.get_ylim()[0]), 1.05)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="best")
    return _picture(figure)


def evaluation_plots(evaluation: Any) -> dict[str, Image.Image]:
    """The pictures of a ``ds.evaluate`` result: one per curve metric (mean curve and spread per method) and one
    for the randomization test, keyed by metric name."""
    better = dict(zip(evaluation.table["metric"], evaluation.table["better"], strict=True))
    pictures = {}
    for metric in dict.fromkeys(name for _, name in evaluation.results):
        curves = evaluation.curves(metric)
        if curves:
            pictures[metric] = curve_plot(
                curves, metric.replace("_", " "), higher_is_better=better[metric] == "higher"
            )
    randomizations = evaluation.randomizations()
    if randomizations:
        pictures["randomization"] = randomization_plot(randomizations)
    return pictures
