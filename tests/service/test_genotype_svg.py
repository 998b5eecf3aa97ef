"""The cell diagram's layout: no edge label overlaps another label or a node, read from the SVG itself."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ElementTree

import pytest

from app.services.genotype_svg import Box, genotype_svg
from darts_core.spec.genotype import DARTS_OP_NAMES

SVG = "{http://www.w3.org/2000/svg}"


def _boxes(svg: str, css_class: str) -> list[Box]:
    root = ElementTree.fromstring(svg)
    return [
        Box(float(rect.get("x")), float(rect.get("y")), float(rect.get("width")), float(rect.get("height")))
        for rect in root.iter(f"{SVG}rect")
        if rect.get("class") == css_class
    ]


def _genotype(internal: int, ops: list[str]) -> dict:
    """Every node reads the two nodes just before it (the densest crossing pattern), ops cycled."""
    cycle = itertools.cycle(ops)
    edges = [[next(cycle), max(0, node + 2 - offset)] for node in range(internal) for offset in (1, 2)]
    concat = list(range(2, internal + 2))
    return {
        "normal": edges,
        "normal_concat": concat,
        "reduce": list(reversed(edges)),
        "reduce_concat": concat,
    }


CASES = {
    "darts-4-nodes": _genotype(4, list(DARTS_OP_NAMES)),
    "one-node": _genotype(1, ["skip_connect"]),
    "eight-nodes-long-names": _genotype(8, ["a_really_long_custom_operation_name_7x7", "x", "sep_conv_5x5"]),
    "dropped-inputs": {  # FairDARTS: nodes that keep 0 and 1 inputs, a dropped one as ("none", j)
        "normal": [["none", 1], ["none", 0], ["sep_conv_3x3", 0], ["none", 2]],
        "normal_concat": [2, 3],
        "reduce": [["max_pool_3x3", 0], ["none", 1], ["none", 2], ["none", 0]],
        "reduce_concat": [2, 3],
    },
    "all-from-input-0": {
        "normal": [["dil_conv_5x5", 0]] * 8,
        "normal_concat": [2, 3, 4, 5],
        "reduce": [["max_pool_3x3", 1]] * 8,
        "reduce_concat": [2, 3, 4, 5],
    },
}


@pytest.mark.parametrize("genotype", CASES.values(), ids=CASES.keys())
def test_no_label_overlaps_a_label_or_a_node(genotype: dict) -> None:
    svg = genotype_svg(genotype)
    labels, nodes = _boxes(svg, "edge-label"), _boxes(svg, "node")
    assert len(labels) == len(genotype["normal"]) + len(genotype["reduce"])
    assert len(nodes) == 2 * (len(genotype["normal"]) // 2 + 3)
    for first, second in itertools.combinations(labels, 2):
        assert not first.intersects(second), (first, second)
    for label, node in itertools.product(labels, nodes):
        assert not label.intersects(node), (label, node)
    for first, second in itertools.combinations(nodes, 2):
        assert not first.intersects(second), (first, second)


@pytest.mark.parametrize("genotype", CASES.values(), ids=CASES.keys())
def test_everything_lies_inside_the_canvas_and_text_fits_its_box(genotype: dict) -> None:
    svg = genotype_svg(genotype)
    root = ElementTree.fromstring(svg)
    canvas = Box(0, 0, float(root.get("width")), float(root.get("height")))
    for box in _boxes(svg, "edge-label") + _boxes(svg, "node"):
        assert canvas.x <= box.x and box.x + box.width <= canvas.width, box
        assert canvas.y <= box.y and box.y + box.height <= canvas.height, box
    for group in root.iter(f"{SVG}g"):
        rect, text = group.find(f"{SVG}rect"), group.find(f"{SVG}text")
        left, length = float(text.get("x")), float(text.get("textLength"))
        assert float(rect.get("x")) < left and left + length < float(rect.get("x")) + float(rect.get("width"))
        assert text.text == group.get("data-op")


def test_labels_are_escaped() -> None:
    svg = genotype_svg(_genotype(2, ["<b>&op"]))
    ElementTree.fromstring(svg)  # well-formed
    assert "<b>" not in svg


def test_box_intersection_is_strict() -> None:
    assert Box(0, 0, 10, 10).intersects(Box(5, 5, 10, 10))
    assert not Box(0, 0, 10, 10).intersects(Box(10, 0, 10, 10))  # touching
    assert not Box(0, 0, 10, 10).intersects(Box(0, 11, 10, 10))


def test_a_dropped_input_is_drawn_dashed() -> None:
    svg = genotype_svg(CASES["dropped-inputs"])
    edges = ElementTree.fromstring(svg).iter(f"{SVG}path")
    dashed = [edge for edge in edges if edge.get("class") == "edge" and edge.get("stroke-dasharray")]
    assert len(dashed) == 6  # the six ("none", j) genes
