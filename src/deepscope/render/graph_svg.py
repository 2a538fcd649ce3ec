"""Architecture graph -> node-link diagram as standalone SVG (layered top-to-bottom layout, no external tools).

Ranks are longest paths from the input; nodes within a rank are ordered by the mean position of their inputs.
Edges between neighboring ranks are straight; longer ones (skip connections) arc to the side.
"""

from __future__ import annotations

from html import escape

from deepscope.probe.graph import Graph

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


def graph_svg(dataflow: Graph, title: str = "") -> str:
    """The graph as an SVG document string; each box shows op, module path and output shape."""
    position = layout(dataflow)
    xs = [x for x, _ in position.values()]
    ys = [y for _, y in position.values()]
    arc_room = 80
    left = min(xs) - BOX_WIDTH / 2 - 10
    right = max(xs) + BOX_WIDTH / 2 + arc_room
    top, bottom = -10 - (20 if title else 0), max(ys) + BOX_HEIGHT / 2 + 10
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
