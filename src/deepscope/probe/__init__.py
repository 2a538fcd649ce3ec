"""Layer addressing, scoped hooks, receptive fields and the architecture graph."""

from deepscope.probe.capture import Recording, capture
from deepscope.probe.graph import Graph, Node, graph
from deepscope.probe.layers import find_layers, get_layer, layer_names
from deepscope.probe.receptive_field import ReceptiveField, receptive_field
from deepscope.probe.state import evaluation_mode

__all__ = [
    "Graph",
    "Node",
    "ReceptiveField",
    "Recording",
    "capture",
    "evaluation_mode",
    "find_layers",
    "get_layer",
    "graph",
    "layer_names",
    "receptive_field",
]
