"""Draw a genotype's normal and reduction cells as an SVG graph (no graphviz needed)."""

from __future__ import annotations

from html import escape
from typing import Any

NODE_WIDTH = 86
NODE_HEIGHT = 28
ROW_GAP = 56
CELL_WIDTH = 520
CELL_GAP = 40
MARGIN = 20

_EDGE_COLOURS = {
    "max_pool_3x3": "#8e44ad",
    "avg_pool_3x3": "#9b59b6",
    "skip_connect": "#7f8c8d",
    "sep_conv_3x3": "#2471a3",
    "sep_conv_5x5": "#1a5276",
    "dil_conv_3x3": "#b9770e",
    "dil_conv_5x5": "#935116",
}


def _cell_svg(title: str, edges: list[Any], concat: list[int], x0: float) -> tuple[list[str], float]:
    """Elements of one cell; nodes 0 and 1 are the cell inputs, 2.. the internal nodes."""
    internal = len(edges) // 2
    positions: dict[int, tuple[float, float]] = {
        0: (x0, MARGIN + 30),
        1: (x0, MARGIN + 30 + ROW_GAP),
    }
    for index in range(internal):
        positions[index + 2] = (x0 + 190 + (index % 2) * 60, MARGIN + 30 + index * ROW_GAP)
    output_y = MARGIN + 30 + max(0, internal - 1) * ROW_GAP / 2
    output = (x0 + CELL_WIDTH - NODE_WIDTH - 10, output_y)
    labels = {0: "c_{k-2}", 1: "c_{k-1}"} | {i + 2: str(i) for i in range(internal)}
    parts = [f'<text x="{x0}" y="{MARGIN + 10}" font-weight="bold">{escape(title)}</text>']

    def centre(point: tuple[float, float]) -> tuple[float, float]:
        return point[0] + NODE_WIDTH / 2, point[1] + NODE_HEIGHT / 2

    for position, (op, source) in enumerate(edges):
        target = position // 2 + 2
        (x1, y1), (x2, y2) = centre(positions[int(source)]), centre(positions[target])
        colour = _EDGE_COLOURS.get(str(op), "#333")
        parts.append(
            f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="{colour}" '
            'stroke-width="1.5" marker-end="url(#arrow)"/>'
        )
        parts.append(
            f'<text x="{(x1 + x2) / 2:.0f}" y="{(y1 + y2) / 2 - 3:.0f}" font-size="10" fill="{colour}" '
            f'text-anchor="middle">{escape(str(op))}</text>'
        )
    for node in concat:
        if node in positions:
            (x1, y1), (x2, y2) = centre(positions[node]), centre(output)
            parts.append(
                f'<line x1="{x1:.0f}" y1="{y1:.0f}" x2="{x2:.0f}" y2="{y2:.0f}" stroke="#bbb" '
                'stroke-dasharray="4 3"/>'
            )
    for node, (x, y) in [*positions.items(), (-1, output)]:
        label = "c_{k}" if node == -1 else labels[node]
        fill = "#d5f5e3" if node in (0, 1) else "#fdebd0" if node == -1 else "#d6eaf8"
        parts.append(
            f'<rect x="{x:.0f}" y="{y:.0f}" width="{NODE_WIDTH}" height="{NODE_HEIGHT}" rx="6" '
            f'fill="{fill}" stroke="#555"/>'
            f'<text x="{x + NODE_WIDTH / 2:.0f}" y="{y + 18:.0f}" text-anchor="middle">{escape(label)}</text>'
        )
    height = MARGIN + 30 + max(2, internal) * ROW_GAP
    return parts, height


def genotype_svg(genotype: dict[str, Any]) -> str:
    """An SVG document showing the normal cell and the reduction cell side by side."""
    normal, normal_height = _cell_svg(
        "normal cell", genotype.get("normal", []), genotype.get("normal_concat", []), MARGIN
    )
    reduce, reduce_height = _cell_svg(
        "reduction cell",
        genotype.get("reduce", []),
        genotype.get("reduce_concat", []),
        MARGIN + CELL_WIDTH + CELL_GAP,
    )
    width = 2 * CELL_WIDTH + CELL_GAP + 2 * MARGIN
    height = max(normal_height, reduce_height) + MARGIN
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
        f'font-family="sans-serif" font-size="12">'
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
        'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/></marker></defs>'
        + "".join(normal + reduce)
        + "</svg>"
    )
