"""Draw a genotype's normal and reduction cells as an SVG graph (no graphviz needed).

The layout guarantees that no edge label overlaps another label or a node, whatever the op names:

- Each cell is a row of columns, left to right: the two inputs, then one column per internal node (a
  node only reads earlier nodes, so every edge points right), then the output `c_{k}`.
- Between two node columns lies a *lane*: room for the edges to curve, then a strip as wide as the
  cell's longest label, just left of the next node. The strip left of internal node `n` holds only
  the labels of `n`'s two incoming edges, on the straight last stretch of each edge: the first above
  its entry port in the node's upper half, the second below its port in the lower half. Lanes and
  node columns never share an x range, and the two labels of a strip lie on either side of the
  node's middle, so no two label boxes and no label box and node box intersect.
- Each label is drawn on an opaque box with `textLength` set to the box's inner width, so the text
  stays inside its box whatever font the viewer substitutes.

Every label box carries `class="edge-label"` and every node box `class="node"` (and `data-*`
attributes naming the edge), so tests and the page can check the geometry.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Any

NODE_WIDTH = 64
NODE_HEIGHT = 32
ROW_PITCH = 64
ROWS = 3
LABEL_FONT_SIZE = 11
LABEL_CHAR_WIDTH = 6.7  # monospace advance at LABEL_FONT_SIZE: the box is sized from it
LABEL_PAD = 4
LABEL_HEIGHT = 15
LABEL_GAP = 2  # between a label box and the edge it names
CURVE_ROOM = 56  # the part of a lane where edges curve towards their target's port
LABEL_MARGIN = 6  # between a label strip and its node
TITLE_HEIGHT = 26
MARGIN = 12
CELL_GAP = 18

_EDGE_COLOURS = {
    "max_pool_3x3": "#8e44ad",
    "avg_pool_3x3": "#9b59b6",
    "skip_connect": "#566573",
    "sep_conv_3x3": "#2471a3",
    "sep_conv_5x5": "#1a5276",
    "dil_conv_3x3": "#b9770e",
    "dil_conv_5x5": "#935116",
    "none": "#aaa",  # a dropped input (FairDARTS keeps fewer than two): drawn dashed
}


@dataclass(frozen=True)
class Box:
    """An axis-aligned rectangle: `x`, `y` its top-left corner."""

    x: float
    y: float
    width: float
    height: float

    def intersects(self, other: Box) -> bool:
        """True when the two boxes share interior points (touching edges do not count)."""
        return (
            self.x < other.x + other.width
            and other.x < self.x + self.width
            and self.y < other.y + other.height
            and other.y < self.y + self.height
        )


def label_width(text: str) -> float:
    """Width of the box of an edge label `text`."""
    return len(text) * LABEL_CHAR_WIDTH + 2 * LABEL_PAD


def _node_row(node: int) -> int:
    """Row (0..ROWS-1) of node `node` (0, 1: the inputs; 2..: internal nodes). Neighbours differ."""
    if node < 2:
        return 0 if node == 0 else ROWS - 1
    return (node - 1) % ROWS


def _cell_svg(title: str, edges: list[Any], concat: list[int], y0: float) -> tuple[list[str], float, float]:
    """Elements of one cell whose top is at `y0`; returns (elements, width, height)."""
    internal = len(edges) // 2
    ops = [str(op) for op, _ in edges]
    strip = max([label_width(op) for op in ops] + [40.0])
    lane = CURVE_ROOM + strip + LABEL_MARGIN
    top = y0 + TITLE_HEIGHT + LABEL_HEIGHT + LABEL_GAP

    # Column of each node: inputs 0, internal node n at n - 1, output after the last internal node.
    def column_x(column: int) -> float:
        return MARGIN + column * (NODE_WIDTH + lane)

    boxes: dict[int, Box] = {}
    for node in range(internal + 2):
        column = 0 if node < 2 else node - 1
        boxes[node] = Box(column_x(column), top + _node_row(node) * ROW_PITCH, NODE_WIDTH, NODE_HEIGHT)
    output = Box(column_x(internal + 1), top + ROW_PITCH, NODE_WIDTH, NODE_HEIGHT)
    names = {0: "c_{k-2}", 1: "c_{k-1}"} | {n + 2: str(n) for n in range(internal)}

    parts = [
        f'<text class="cell-title" x="{MARGIN}" y="{y0 + 17:.1f}" font-weight="bold">{escape(title)}</text>'
    ]
    edge_parts: list[str] = []
    label_parts: list[str] = []
    for position, ((_, source), name) in enumerate(zip(edges, ops, strict=True)):
        target = position // 2 + 2
        upper = position % 2 == 0
        source_box, target_box = boxes[int(source)], boxes[target]
        # Entry ports at a quarter and three quarters of the target's height.
        port_y = target_box.y + NODE_HEIGHT * (0.3 if upper else 0.7)
        # The edge curves until the label strip, then runs straight into its port under its label.
        lane_left = target_box.x - LABEL_MARGIN - strip
        x1, y1 = source_box.x + NODE_WIDTH, source_box.y + NODE_HEIGHT / 2
        bend = max(CURVE_ROOM / 2, (lane_left - x1) / 2)
        colour = _EDGE_COLOURS.get(name, "#333")
        dashes = ' stroke-dasharray="3 3"' if name == "none" else ""
        edge_parts.append(
            f'<path class="edge" d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} {lane_left - bend:.1f},'
            f'{port_y:.1f} {lane_left:.1f},{port_y:.1f} L{target_box.x:.1f},{port_y:.1f}" fill="none" '
            f'stroke="{colour}" stroke-width="1.6"{dashes} marker-end="url(#arrow)"/>'
        )
        width = label_width(name)
        box = Box(
            lane_left,
            port_y - LABEL_GAP - LABEL_HEIGHT if upper else port_y + LABEL_GAP,
            width,
            LABEL_HEIGHT,
        )
        label_parts.append(
            f'<g class="edge-label-group" data-op="{escape(name)}" data-from="{int(source)}" '
            f'data-to="{target}"><rect class="edge-label" x="{box.x:.1f}" y="{box.y:.1f}" '
            f'width="{box.width:.1f}" height="{box.height:.1f}" rx="3" fill="#fff" stroke="{colour}" '
            f'stroke-width="0.8"/><text x="{box.x + LABEL_PAD:.1f}" y="{box.y + LABEL_HEIGHT - 4:.1f}" '
            f'textLength="{width - 2 * LABEL_PAD:.1f}" lengthAdjust="spacingAndGlyphs" '
            f'font-family="monospace" font-size="{LABEL_FONT_SIZE}" fill="{colour}">{escape(name)}</text></g>'
        )
    for node in concat:
        if node in boxes:
            box = boxes[node]
            x1, y1 = box.x + NODE_WIDTH, box.y + NODE_HEIGHT / 2
            x2, y2 = output.x, output.y + NODE_HEIGHT / 2
            bend = max(24.0, (x2 - x1) / 2)
            edge_parts.append(
                f'<path class="concat-edge" d="M{x1:.1f},{y1:.1f} C{x1 + bend:.1f},{y1:.1f} '
                f'{x2 - bend:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" fill="none" stroke="#aaa" '
                'stroke-dasharray="4 3"/>'
            )
    node_parts = []
    for node, box in [*boxes.items(), (-1, output)]:
        label = "c_{k}" if node == -1 else names[node]
        fill = "#d5f5e3" if node in (0, 1) else "#fdebd0" if node == -1 else "#d6eaf8"
        node_parts.append(
            f'<rect class="node" data-node="{escape(label)}" x="{box.x:.1f}" y="{box.y:.1f}" '
            f'width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" fill="{fill}" stroke="#555"/>'
            f'<text x="{box.x + NODE_WIDTH / 2:.1f}" y="{box.y + NODE_HEIGHT / 2 + 4:.1f}" '
            f'text-anchor="middle">{escape(label)}</text>'
        )
    # Painted in this order: edges under nodes, labels on top of everything.
    parts += edge_parts + node_parts + label_parts
    width = output.x + NODE_WIDTH + MARGIN
    height = top + (ROWS - 1) * ROW_PITCH + NODE_HEIGHT + LABEL_GAP + LABEL_HEIGHT + MARGIN - y0
    return parts, width, height


def genotype_svg(genotype: dict[str, Any]) -> str:
    """An SVG document showing the normal cell above the reduction cell."""
    normal, normal_width, normal_height = _cell_svg(
        "normal cell", genotype.get("normal", []), genotype.get("normal_concat", []), 0.0
    )
    reduce, reduce_width, reduce_height = _cell_svg(
        "reduction cell",
        genotype.get("reduce", []),
        genotype.get("reduce_concat", []),
        normal_height + CELL_GAP,
    )
    width = max(normal_width, reduce_width)
    height = normal_height + CELL_GAP + reduce_height
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'viewBox="0 0 {width:.0f} {height:.0f}" font-family="sans-serif" font-size="12">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>'
        + "".join(normal + reduce)
        + "</svg>"
    )
