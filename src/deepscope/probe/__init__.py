"""Model access: layer addressing, the scoped hooks, the forward-only inference copy, receptive fields, the
architecture graph and the weights connecting units of consecutive layers."""

from deepscope.probe.capture import Recording, capture
from deepscope.probe.connections import unit_connections
from deepscope.probe.graph import Graph, Node, graph
from deepscope.probe.hooks import hooks, layer_hooks
from deepscope.probe.inference import forward_only
from deepscope.probe.layers import LayerAddress, find_layers, get_layer, layer_names, parse_layer
from deepscope.probe.receptive_field import ReceptiveField, receptive_field

__all__ = [
    "Graph",
    "LayerAddress",
    "Node",
    "ReceptiveField",
    "Recording",
    "capture",
    "find_layers",
    "forward_only",
    "get_layer",
    "graph",
    "hooks",
    "layer_hooks",
    "layer_names",
    "parse_layer",
    "receptive_field",
    "unit_connections",
]
