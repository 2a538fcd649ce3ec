"""Dataset atlas: one pass over a dataset -> predictions, embeddings, confusion, histograms, per-unit top-k,
stored in a resumable workspace; layouts (t-SNE, UMAP, PCA, image grids), neighbors, per-class quality, unit
class selectivity, neuron clusters joined by the weights, and model comparison (linear CKA, per-layer layouts
and sparsity). Runs locally or on Ray (``engine='ray'``)."""

from deepscope.atlas.clusters import LayerClusters, NeuronClusters, cluster_units, neuron_clusters
from deepscope.atlas.compare import CKA, Comparison, cka, cka_matrix, compare, linear_cka
from deepscope.atlas.layouts import GridLayout, image_grid, nearest_neighbors, pca, tsne, umap
from deepscope.atlas.quality import ClassReport, ConfusedPair, class_report, most_confused, weight_histograms
from deepscope.atlas.scanning.driver import scan
from deepscope.atlas.scanning.reductions import Histogram
from deepscope.atlas.selectivity import Selectivity, class_selectivity, selectivity_index
from deepscope.atlas.workspace import Workspace, open_workspace

__all__ = [
    "CKA",
    "ClassReport",
    "Comparison",
    "ConfusedPair",
    "GridLayout",
    "Histogram",
    "LayerClusters",
    "NeuronClusters",
    "Selectivity",
    "Workspace",
    "cka",
    "cka_matrix",
    "class_report",
    "class_selectivity",
    "cluster_units",
    "compare",
    "image_grid",
    "linear_cka",
    "most_confused",
    "nearest_neighbors",
    "neuron_clusters",
    "open_workspace",
    "pca",
    "scan",
    "selectivity_index",
    "tsne",
    "umap",
    "weight_histograms",
]
