"""Dataset atlas: one pass over a dataset -> predictions, embeddings, confusion, histograms, per-unit top-k,
stored in a resumable workspace; layouts (t-SNE, UMAP, PCA, image grids), neighbors, per-class quality and
model comparison (linear CKA). Runs locally or on Ray (``engine='ray'``)."""

from deepscope.atlas.compare import CKA, Comparison, cka, cka_matrix, compare, linear_cka
from deepscope.atlas.layouts import GridLayout, image_grid, nearest_neighbors, pca, tsne, umap
from deepscope.atlas.quality import ClassReport, ConfusedPair, class_report, most_confused, weight_histograms
from deepscope.atlas.scanning.driver import scan
from deepscope.atlas.scanning.reductions import Histogram
from deepscope.atlas.workspace import Workspace, open_workspace

__all__ = [
    "CKA",
    "ClassReport",
    "Comparison",
    "ConfusedPair",
    "GridLayout",
    "Histogram",
    "Workspace",
    "cka",
    "cka_matrix",
    "class_report",
    "compare",
    "image_grid",
    "linear_cka",
    "most_confused",
    "nearest_neighbors",
    "open_workspace",
    "pca",
    "scan",
    "tsne",
    "umap",
    "weight_histograms",
]
