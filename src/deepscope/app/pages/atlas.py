"""Pages for the atlas: the pages of ``deepscope compare`` and ``deepscope selectivity`` and the atlas section of
``deepscope demo``."""

from __future__ import annotations

import time
from html import escape

import numpy as np
import torch

from deepscope.atlas.compare import Comparison, cka
from deepscope.atlas.scanning.driver import scan
from deepscope.atlas.selectivity import Selectivity
from deepscope.atlas.workspace import Workspace
from deepscope.render.charts import (
    confusion_image,
    grid_image,
    heatmap_image,
    histograms_image,
    layer_comparison_image,
    scatter_image,
    selectivity_image,
    selectivity_summary_image,
)
from deepscope.render.html import Report
from deepscope.render.images import data_uri


def _side_by_side(*pictures: tuple[str, object]) -> str:
    figures = "".join(
        f'<figure><img src="{data_uri(picture)}" alt="{escape(caption)}"><figcaption>{escape(caption)}</figcaption>'
        "</figure>"
        for caption, picture in pictures
    )
    return f'<div style="display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start">{figures}</div>'


def comparison_report(result: Comparison, a: Workspace, b: Workspace) -> Report:
    """A page with the CKA heat map of two scans and their confusion matrices side by side."""
    report = Report(
        "deepscope compare",
        f"A = {a.run.model} ({a.path}), B = {b.run.model} ({b.path}), both on {a.run.dataset}, "
        f"{len(a.indices)} samples.",
    )
    section = report.section("Layer similarity")
    section.text(
        "Linear CKA (Kornblith et al. 2019) between every pair of recorded layers, from the pooled activations "
        "stored in the workspaces (spatial mean per channel). 1 = the same representation up to rotation and "
        "scale. For full-activation CKA run ds.atlas.cka(model_a, model_b, data)."
    )
    section.image(
        heatmap_image(
            result.cka, result.layers_a, result.layers_b, "linear CKA", vmin=0, vmax=1, xlabel="B", ylabel="A"
        )
    )
    section = report.section("Layer by layer")
    section.text(
        "Each layer's sparsity (the fraction of its output values that are not above zero) for A and B"
        + (
            f", and a {result.layout} layout of the samples per layer, colored by label"
            if result.layout
            else ""
        )
        + " (Yu et al. 2016 compare two networks this way)."
    )
    section.image(layer_comparison_image(result, a.labels, a.classes))
    section = report.section("Confusion matrices")
    if np.isnan(result.accuracy_a):
        section.text("The data has no labels.")
        return report
    section.text(
        f"Accuracy A {result.accuracy_a:.2%}, B {result.accuracy_b:.2%}; the two predict the same class on "
        f"{result.agreement:.2%} of the samples."
    )
    section.html(
        _side_by_side(
            ("A: " + a.run.model, confusion_image(result.confusion_a, result.classes, "A")),
            ("B: " + b.run.model, confusion_image(result.confusion_b, result.classes, "B")),
        )
    )
    return report


def selectivity_report(ws: Workspace, results: list[Selectivity]) -> Report:
    """A page with each layer's class selectivity: the summary and the per-class histograms of its most
    selective units."""
    report = Report(
        "deepscope selectivity",
        f"{ws.run.model} on {ws.run.dataset} ({ws.path}), {len(ws.indices)} samples: class selectivity index of "
        "Morcos et al. 2018 over the classes' mean pooled activations; per-class histograms as Sun et al. 2015.",
    )
    for result in results:
        section = report.section(result.layer)
        section.image(selectivity_summary_image(result))
        if result.defined.any():
            section.image(selectivity_image(result, title=f"{result.layer}: the most selective units"))
        else:
            section.text("No unit has a defined index here (negative class means or no activity).")
    return report


def atlas_section(report: Report, context) -> None:
    """Demo section: the LeNet / MNIST atlas (scan, confusion, t-SNE grid, histograms, CKA against random init)."""
    import tempfile

    from deepscope.zoo.lenet import lenet5

    section = report.section("Dataset atlas")
    lenet, digits = context.lenet, context.digits
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        ws = scan(lenet, digits, out=out, batch_size=128)
        seconds = time.perf_counter() - start
        report_ = ws.class_report()
        section.text(
            f"ds.atlas.scan: LeNet-5 over the {len(ws.indices)} held-out MNIST digits in one pass ({seconds:.1f} s): "
            f"predictions, probabilities, pooled embeddings of {len(ws.layers)} layers (embedding = input of the last "
            f"Linear, found by hooks), histograms of every activation value, dead units, top-16 digits per unit and "
            f"the confusion matrix, written to a resumable SQLite + .npy workspace. Accuracy {report_.accuracy:.1%}; "
            f"lowest F1: class {ws.classes[int(np.nanargmin(report_.f1))]} ({np.nanmin(report_.f1):.3f})."
        )
        points = ws.layout("tsne", n_jobs=2)
        grid = ws.image_grid(32, 32, kind="tsne")
        section.html(
            _side_by_side(
                ("confusion matrix (rows: true digit)", confusion_image(ws.confusion_matrix(), ws.classes)),
                (
                    "t-SNE of the embeddings (openTSNE), by true digit",
                    scatter_image(points, ws.labels, ws.classes),
                ),
                (
                    "the same t-SNE snapped to a 32x32 grid by linear assignment",
                    grid_image(ws.thumbnails, grid.cells),
                ),
            )
        )
        pairs = ws.most_confused(n=4, samples=6)
        thumbnails, indices = ws.thumbnails, ws.indices
        rows = []
        for pair in pairs:
            positions = np.searchsorted(indices, pair.samples)
            picture = grid_image(thumbnails, positions[None, :], scale=2, pad=1)
            rows.append(
                [
                    f"{ws.classes[pair.label]} → {ws.classes[pair.predicted]}",
                    str(pair.count),
                    f'<img src="{data_uri(picture)}" alt="confused digits">',
                ]
            )
        section.html("<h3>Most confused pairs, most confident mistakes first</h3>")
        section.table(["true → predicted", "count", "samples"], rows, raw=True)
        histograms = {layer: ws.activation_histogram(layer) for layer in ws.layers}
        dead = {layer: int(ws.unit_statistics(layer)["dead"].sum()) for layer in ws.layers}
        section.html(
            _side_by_side(
                (
                    "activation histograms over the dataset (log counts); dead units: "
                    + ", ".join(f"{layer} {count}" for layer, count in dead.items()),
                    histograms_image(histograms, "activations"),
                ),
                ("weight histograms", histograms_image(ws.weight_histograms(), "weights", log=False)),
            )
        )
    torch.manual_seed(0)
    random = lenet.with_module(lenet5().eval())
    similarity = cka(lenet, random, digits, samples=512, batch_size=128)
    itself = cka(lenet, lenet, digits, samples=512, batch_size=128)
    section.html(
        _side_by_side(
            (
                "LeNet vs itself",
                heatmap_image(
                    itself.matrix, itself.layers_a, itself.layers_b, "CKA: trained vs trained", vmin=0, vmax=1
                ),
            ),
            (
                "LeNet vs a random-init LeNet: early layers stay alike, learned layers part",
                heatmap_image(
                    similarity.matrix,
                    similarity.layers_a,
                    similarity.layers_b,
                    "CKA: trained vs random",
                    vmin=0,
                    vmax=1,
                ),
            ),
        )
    )
