"""Architecture graph -> node-link diagram as standalone SVG (layered top-to-bottom layout, no external tools).

Ranks are longest paths from the input; nodes within a rank are ordered by the mean position of their inputs.
Edges between neighboring ranks are straight; longer ones (skip connections) arc to the side.

:func:`cluster_graph_svg` draws the neuron-cluster view of CNNVis the same way: one rank per layer, one box per
cluster of units, edges as wide and as dark as the summed weights they bundle.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np
from PIL import Image

from deepscope.errors import SettingError
from deepscope.probe.graph import Graph
from deepscope.render.images import data_uri

BOX_WIDTH, BOX_HEIGHT = 210, 34
RANK_GAP, COLUMN_GAP = 22, 40
COLORS = {
    "input": "#e8eef7",
    "output": "#e8eef7",
    "conv": "#d6e9d4",
    "norm": "#f3ead2",
    "act": "#f7dfdf",
    "pool": "#dfe3f5",
    "linear": "#eadcf3",
    "merge": "#fde3b8",
    "other": "#eeeeee",
}


def _family(op: str) -> str:
    lowered = op.lower()
    if op in ("input", "output"):
        return op
    if "conv" in lowered:
        return "conv"
    if "norm" in lowered:
        return "norm"
    if "pool" in lowered:
        return "pool"
    if lowered in ("linear", "fc") or "linear" in lowered:
        return "linear"
    if lowered in ("add", "cat", "mul"):
        return "merge"
    if any(a in lowered for a in ("relu", "swish", "silu", "gelu", "sigmoid", "tanh", "hardswish")):
        return "act"
    return "other"


def layout(dataflow: Graph) -> dict[str, tuple[float, float]]:
    """Node id -> (x, y) of its box center."""
    rank: dict[str, int] = {}
    for node in dataflow.nodes:  # nodes are in topological order
        inputs = dataflow.inputs_of(node.id)
        rank[node.id] = 1 + max((rank[i] for i in inputs), default=-1)
    by_rank: dict[int, list[str]] = {}
    for node in dataflow.nodes:
        by_rank.setdefault(rank[node.id], []).append(node.id)
    position: dict[str, tuple[float, float]] = {}
    for level in sorted(by_rank):
        ids = by_rank[level]
        anchor = {
            node_id: sum(position[i][0] for i in dataflow.inputs_of(node_id))
            / max(len(dataflow.inputs_of(node_id)), 1)
            for node_id in ids
        }
        ids.sort(key=lambda node_id: anchor[node_id])
        width = len(ids) * (BOX_WIDTH + COLUMN_GAP) - COLUMN_GAP
        for index, node_id in enumerate(ids):
            x = -width / 2 + BOX_WIDTH / 2 + index * (BOX_WIDTH + COLUMN_GAP)
            position[node_id] = (x, level * (BOX_HEIGHT + RANK_GAP) + BOX_HEIGHT / 2)
    return position


def _svg_start(left: float, top: float, right: float, bottom: float, title: str) -> list[str]:
    """The opening of an SVG document over the box (left, top)-(right, bottom), its arrow marker and title."""
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="{left:.0f} {top:.0f} {right - left:.0f} '
        f'{bottom - top:.0f}" width="{right - left:.0f}" height="{bottom - top:.0f}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="11">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#777"/></marker></defs>',
    ]
    if title:
        parts.append(
            f'<text x="{left + 4:.0f}" y="{top + 14:.0f}" font-size="13" font-weight="bold">{escape(title)}</text>'
        )
    return parts


def graph_svg(dataflow: Graph, title: str = "") -> str:
    """The graph as an SVG document string; each box shows op, module path and output shape."""
    position = layout(dataflow)
    xs = [x for x, _ in position.values()]
    ys = [y for _, y in position.values()]
    arc_room = 80
    left = min(xs) - BOX_WIDTH / 2 - 10
    right = max(xs) + BOX_WIDTH / 2 + arc_room
    top, bottom = -10 - (20 if title else 0), max(ys) + BOX_HEIGHT / 2 + 10
    parts = _svg_start(left, top, right, bottom, title)
    for src, dst in dataflow.edges:
        (x1, y1), (x2, y2) = position[src], position[dst]
        y1 += BOX_HEIGHT / 2
        y2 -= BOX_HEIGHT / 2
        if y2 - y1 <= RANK_GAP + 1 or x1 != x2:
            parts.append(
                f'<path d="M {x1:.1f} {y1:.1f} L {x2:.1f} {y2:.1f}" stroke="#777" fill="none" marker-end="url(#arrow)"/>'
            )
        else:  # a long edge on one column: arc around the boxes in between
            bend = x1 + BOX_WIDTH / 2 + 30 + min((y2 - y1) / 40, 40)
            parts.append(
                f'<path d="M {x1 + BOX_WIDTH / 2:.1f} {y1 - BOX_HEIGHT / 2:.1f} C {bend:.1f} {y1:.1f}, '
                f'{bend:.1f} {y2:.1f}, {x2 + BOX_WIDTH / 2:.1f} {y2 + BOX_HEIGHT / 2:.1f}" stroke="#c07a00" '
                'fill="none" marker-end="url(#arrow)"/>'
            )
    for node in dataflow.nodes:
        x, y = position[node.id]
        color = COLORS[_family(node.op)]
        shape = "×".join(map(str, node.output_shape[1:])) if node.output_shape else ""
        label = node.op if not node.module else f"{node.op} · {node.module}"
        tooltip = f"{node.id}: {node.op}\nmodule: {node.module}\noutput: {node.output_shape}\nparams: {node.params:,d}"
        parts.append(
            f'<g><title>{escape(tooltip)}</title><rect x="{x - BOX_WIDTH / 2:.1f}" y="{y - BOX_HEIGHT / 2:.1f}" '
            f'width="{BOX_WIDTH}" height="{BOX_HEIGHT}" rx="5" fill="{color}" stroke="#888"/>'
            f'<text x="{x:.1f}" y="{y - 3:.1f}" text-anchor="middle">{escape(label[:34])}</text>'
            f'<text x="{x:.1f}" y="{y + 11:.1f}" text-anchor="middle" fill="#555">{escape(shape)}</text></g>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


CLUSTER_WIDTH, THUMBNAIL = 150, 26
LAYER_GAP, LABEL_WIDTH = 70, 90


def cluster_order(edges: Sequence[np.ndarray], sizes: Sequence[int]) -> list[list[int]]:
    """The left-to-right order of each layer's clusters: the first layer's as numbered, every later one by the
    weighted mean position of the clusters feeding it (the barycenter heuristic of layered drawings), which keeps
    strong edges short and uncrossed.

    >>> cluster_order([np.array([[0.0, 1.0], [1.0, 0.0]])], [2, 2])
    [[0, 1], [1, 0]]
    """
    orders = [list(range(sizes[0]))]
    for weights, count in zip(edges, sizes[1:], strict=True):
        position = np.empty(len(orders[-1]))
        position[orders[-1]] = np.arange(len(orders[-1]))
        totals = weights.sum(1)
        centers = np.where(
            totals > 0, weights @ position / np.where(totals > 0, totals, 1.0), np.arange(count)
        )
        orders.append(sorted(range(count), key=lambda cluster: (centers[cluster], cluster)))
    return orders


def cluster_graph_svg(
    clusters: object,
    thumbnails: np.ndarray | None = None,
    indices: np.ndarray | None = None,
    title: str = "",
) -> str:
    """A :class:`~deepscope.atlas.NeuronClusters` as an SVG node-link diagram: one row per layer, one box per
    cluster (its number, its units and, given the workspace's ``thumbnails`` ``uint8 [N, h, w, c]`` with their
    dataset ``indices``, its representative samples), and an edge from each cluster to each cluster of the next
    layer whose width and darkness grow with the summed absolute weights between them (relative to the
    strongest edge between the two layers; the value is in each edge's tooltip).

    >>> import tempfile, deepscope as ds
    >>> ws = ds.atlas.scan("zoo:lenet_mnist", ds.datasets.mnist5k("test").subset(range(100)), out=tempfile.mkdtemp())
    >>> clusters = ds.atlas.neuron_clusters(ws, "zoo:lenet_mnist", ["conv1", "conv2"], k=2)
    >>> cluster_graph_svg(clusters, ws.thumbnails, ws.indices).count("<image")  # 2 layers x 2 clusters x 6 samples
    24
    """
    layers = list(clusters.layers)
    if (thumbnails is None) != (indices is None):
        raise SettingError("give thumbnails together with their dataset indices (ws.thumbnails, ws.indices)")
    orders = cluster_order(clusters.edges, [entry.clusters for entry in layers])
    samples = max(entry.representatives.shape[1] for entry in layers) if thumbnails is not None else 0
    per_row = max(1, (CLUSTER_WIDTH - 8) // (THUMBNAIL + 2))
    box_height = 34 + (-(-samples // per_row)) * (THUMBNAIL + 2)
    widest = max(len(order) for order in orders)
    position: list[dict[int, tuple[float, float]]] = []
    for row, order in enumerate(orders):
        width = len(order) * (CLUSTER_WIDTH + COLUMN_GAP) - COLUMN_GAP
        start = (widest * (CLUSTER_WIDTH + COLUMN_GAP) - COLUMN_GAP - width) / 2
        y = row * (box_height + LAYER_GAP)
        position.append({c: (start + i * (CLUSTER_WIDTH + COLUMN_GAP), y) for i, c in enumerate(order)})
    right = widest * (CLUSTER_WIDTH + COLUMN_GAP) - COLUMN_GAP + 10
    top = -10 - (20 if title else 0)
    bottom = len(layers) * (box_height + LAYER_GAP) - LAYER_GAP + 10
    parts = _svg_start(-LABEL_WIDTH, top, right, bottom, title)
    for row, weights in enumerate(clusters.edges):
        strongest = float(weights.max()) if weights.size and weights.max() > 0 else 1.0
        for (target, source), weight in np.ndenumerate(weights):
            share = float(weight) / strongest
            (x1, y1), (x2, y2) = position[row][source], position[row + 1][target]
            parts.append(
                f'<path d="M {x1 + CLUSTER_WIDTH / 2:.1f} {y1 + box_height:.1f} L {x2 + CLUSTER_WIDTH / 2:.1f} '
                f'{y2:.1f}" stroke="#3c5a8a" stroke-opacity="{0.1 + 0.7 * share:.2f}" '
                f'stroke-width="{0.5 + 9 * share:.1f}" fill="none"><title>{escape(layers[row].layer)} cluster {source} '
                f"-> {escape(layers[row + 1].layer)} cluster {target}: summed |weight| {weight:.4g}</title></path>"
            )
    for row, entry in enumerate(layers):
        y = position[row][orders[row][0]][1]
        parts.append(
            f'<text x="{-LABEL_WIDTH + 4}" y="{y + box_height / 2 + 4:.1f}" font-weight="bold">'
            f"{escape(entry.layer[:14])}</text>"
        )
        for cluster, (x, y) in position[row].items():
            members = np.flatnonzero(entry.labels == cluster)
            listed = ", ".join(map(str, members[:24])) + (" ..." if len(members) > 24 else "")
            parts.append(
                f"<g><title>{escape(entry.layer)} cluster {cluster}: units {listed}</title>"
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{CLUSTER_WIDTH}" height="{box_height}" rx="5" '
                f'fill="{COLORS["conv"]}" stroke="#888"/>'
                f'<text x="{x + 6:.1f}" y="{y + 15:.1f}">cluster {cluster}</text>'
                f'<text x="{x + 6:.1f}" y="{y + 28:.1f}" fill="#555">{len(members)} units</text>'
            )
            if thumbnails is not None:
                parts.extend(_thumbnails(entry.representatives[cluster], thumbnails, indices, x, y, per_row))
            parts.append("</g>")
    parts.append("</svg>")
    return "\n".join(parts)


def _thumbnails(
    representatives: np.ndarray, thumbnails: np.ndarray, indices: np.ndarray, x: float, y: float, per_row: int
) -> list[str]:
    """<image> elements of a cluster's representative samples (dataset indices, -1: none) inside its box."""
    found = []
    for slot, sample in enumerate(int(s) for s in representatives if s >= 0):
        row = int(np.searchsorted(indices, sample))
        if row >= len(indices) or indices[row] != sample:
            raise SettingError(f"sample {sample} has no thumbnail among the indices given")
        pixels = np.ascontiguousarray(thumbnails[row])
        picture = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
        left = x + 4 + (slot % per_row) * (THUMBNAIL + 2)
        top = y + 34 + (slot // per_row) * (THUMBNAIL + 2)
        found.append(
            f'<image x="{left:.1f}" y="{top:.1f}" width="{THUMBNAIL}" height="{THUMBNAIL}" '
            f'href="{data_uri(picture)}"><title>sample {sample}</title></image>'
        )
    return found
