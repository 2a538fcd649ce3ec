"""Pages for the atlas: the pages of ``deepscope compare`` and ``deepscope selectivity``, and the sections of
``deepscope demo`` that read scans (the atlas; selectivity, neuron clusters and two networks)."""

from __future__ import annotations

import tempfile
import time
from html import escape
from pathlib import Path

import numpy as np
import torch

from deepscope.atlas.clusters import neuron_clusters
from deepscope.atlas.compare import Comparison, cka, compare
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
from deepscope.render.graph_svg import cluster_graph_svg
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


def networks_section(report: Report, context) -> None:
    """Demo section: from scans of LeNet-5 and the MLP over the same digits, LeNet's unit selectivity and neuron
    clusters, and the two networks layer by layer."""
    section = report.section("Selectivity, neuron clusters and two networks")
    lenet, mlp, digits = context.lenet, context.mlp, context.digits
    # the held-out digits are stored by class: every other one gives all ten, and halves the t-SNE work
    digits = digits.subset(range(0, len(digits), 2))
    chain = ["conv1", "conv2", "fc1", "fc2", "fc3"]
    with tempfile.TemporaryDirectory() as out:
        a = scan(lenet, digits, [*chain, "relu3"], out=Path(out) / "lenet", batch_size=250)
        b = scan(mlp, digits, ["fc1", "fc2", "fc3"], out=Path(out) / "mlp", batch_size=250, thumbnail_size=0)
        section.text(
            f"Each view reads a scan (ds.atlas.scan) of {len(digits)} held-out digits (every other one of the "
            "1,000), recording LeNet-5's conv1, conv2, fc1, fc2, fc3 and relu3 (fc1 after its ReLU) and the "
            "MLP's fc1, fc2 and fc3; none needs another pass over the data."
        )

        selectivity = a.selectivity("relu3")
        summary = selectivity.summary()
        section.text(
            f"Unit selectivity (Sun et al. 2015's per-class histograms; the index of Morcos et al. 2018), "
            f"ws.selectivity('relu3'): of LeNet-5's {summary['units']} fc1 units, {summary['defined']} have a "
            f"defined index (mean {summary['mean_index']:.2f}); {summary['one_class']} respond to one digit only "
            f"and {summary['all_classes']} to every digit (a class mean at least half the unit's highest). Below, "
            "the per-class histograms of the 8 most selective units."
        )
        section.image(selectivity_summary_image(selectivity, "LeNet-5 relu3: class selectivity"))
        section.image(selectivity_image(selectivity, title="relu3: the 8 most selective units"))

        clusters = neuron_clusters(a, lenet, chain, k=4)
        section.text(
            "Neuron clusters (CNNVis, Liu et al. 2017), ds.atlas.neuron_clusters: the units of each of LeNet-5's "
            "five layers grouped into 4 clusters by their activations over the scanned digits (Ward clustering of "
            "the correlation profiles), each cluster shown with its 6 representative digits; an edge's width and "
            "darkness grow with the summed absolute weights between two clusters (its value in the tooltip)."
        )
        section.html(
            '<div class="scroll">'
            + cluster_graph_svg(clusters, a.thumbnails, a.indices, "LeNet-5, 4 clusters per layer")
            + "</div>"
        )

        result = compare(a, b, ["conv2", "fc1", "fc2", "fc3"], ["fc1", "fc2", "fc3"], layout="tsne", n_jobs=1)
        section.text(
            "Two networks layer by layer (Yu et al. 2016), ds.atlas.compare(lenet_scan, mlp_scan, layout='tsne'): "
            "A is LeNet-5 (conv2, fc1, fc2, fc3), B the MLP (fc1, fc2, fc3). Per layer, a t-SNE of the digits' "
            "pooled activations colored by digit and the layer's sparsity (the share of its output values not above "
            f"zero); beside it, linear CKA between every pair of layers. Accuracy A {result.accuracy_a:.1%}, "
            f"B {result.accuracy_b:.1%}; the same class on {result.agreement:.1%} of the digits."
        )
        section.html(
            _side_by_side(
                (
                    "LeNet-5 (A) and the MLP (B) layer by layer",
                    layer_comparison_image(result, a.labels, a.classes),
                ),
                (
                    "linear CKA, LeNet-5 against the MLP",
                    heatmap_image(
                        result.cka,
                        result.layers_a,
                        result.layers_b,
                        "linear CKA",
                        vmin=0,
                        vmax=1,
                        xlabel="MLP",
                        ylabel="LeNet-5",
                        size=3.5,
                    ),
                ),
            )
        )
