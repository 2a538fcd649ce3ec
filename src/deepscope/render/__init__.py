"""Tensors -> pictures: the only layer that normalizes, colors and encodes."""

from deepscope.render.graph_svg import cluster_graph_svg, graph_svg
from deepscope.render.heatmap import Figure, grid, heatmap, reduce_channels
from deepscope.render.html import Report
from deepscope.render.images import data_uri, scale_each, tile, to_pil

__all__ = [
    "Figure",
    "Report",
    "cluster_graph_svg",
    "data_uri",
    "graph_svg",
    "grid",
    "heatmap",
    "reduce_channels",
    "scale_each",
    "tile",
    "to_pil",
]
