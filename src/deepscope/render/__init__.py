"""Tensors -> pictures: the only layer that normalises, colours and encodes."""

from deepscope.render.graph_svg import graph_svg
from deepscope.render.html import Report
from deepscope.render.images import data_uri, scale_each, tile, to_pil

__all__ = ["Report", "data_uri", "graph_svg", "scale_each", "tile", "to_pil"]
