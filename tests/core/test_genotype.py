"""Genotype derivation, validation, and the JSON and DARTS string forms."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle

import pytest
import torch

from darts_core.search.derive import derive_genotype
from darts_core.spec.genotype import DARTS_OP_NAMES, DARTS_V2, Genotype, keepable_operations, num_edges

PRIMITIVES = list(DARTS_OP_NAMES)
OP = {name: index for index, name in enumerate(PRIMITIVES)}

# DARTS (second order) cells of Liu, Simonyan and Yang, ICLR 2019 (figures 4 and 5, the reference code's
# DARTS_V2), in the reference code's own printed form.
DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], "
    "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), "
    "('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], "
    "reduce_concat=[2, 3, 4, 5])"
)
DARTS_V2_NORMAL = (
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 0),
    ("sep_conv_3x3", 1),
    ("sep_conv_3x3", 1),
    ("skip_connect", 0),
    ("skip_connect", 0),
    ("dil_conv_3x3", 2),
)
DARTS_V2_REDUCE = (
    ("max_pool_3x3", 0),
    ("max_pool_3x3", 1),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
    ("max_pool_3x3", 0),
    ("skip_connect", 2),
    ("skip_connect", 2),
    ("max_pool_3x3", 1),
)


@pytest.fixture
def darts_v2() -> Genotype:
    return Genotype(normal=DARTS_V2_NORMAL, reduce=DARTS_V2_REDUCE)


def test_the_library_darts_v2_is_the_published_genotype(darts_v2: Genotype) -> None:
    assert DARTS_V2 == darts_v2 == Genotype.from_darts(DARTS_V2_TEXT)


def _edge(node: int, source: int) -> int:
    """Row of the alpha matrix for the edge source -> node."""
    return sum(i + 2 for i in range(node)) + source


# ---------------------------------------------------------------------------------------- derivation


def test_num_edges_matches_darts() -> None:
    assert num_edges(4) == 14
    assert num_edges(1) == 2
    assert num_edges(2) == 5


def test_derive_genotype_on_hand_set_alphas() -> None:
    alphas = torch.zeros(14, len(PRIMITIVES))
    # node 0: edge from 1 is strongest (sep_conv_5x5), then edge from 0 (max_pool_3x3)
    alphas[_edge(0, 0), OP["max_pool_3x3"]] = 2.0
    alphas[_edge(0, 1), OP["sep_conv_5x5"]] = 3.0
    # node 1: edges from 2 and 0; edge from 1 is weak
    alphas[_edge(1, 2), OP["dil_conv_3x3"]] = 4.0
    alphas[_edge(1, 0), OP["skip_connect"]] = 3.5
    alphas[_edge(1, 1), OP["avg_pool_3x3"]] = 1.0
    # node 2: edges from 3 and 1
    alphas[_edge(2, 3), OP["sep_conv_3x3"]] = 2.5
    alphas[_edge(2, 1), OP["dil_conv_5x5"]] = 2.0
    # node 3: edges from 4 and 2
    alphas[_edge(3, 2), OP["avg_pool_3x3"]] = 5.0
    alphas[_edge(3, 4), OP["skip_connect"]] = 4.0

    genotype = derive_genotype(alphas, alphas.clone(), PRIMITIVES)

    expected = (
        ("sep_conv_5x5", 1),
        ("max_pool_3x3", 0),
        ("dil_conv_3x3", 2),
        ("skip_connect", 0),
        ("sep_conv_3x3", 3),
        ("dil_conv_5x5", 1),
        ("avg_pool_3x3", 2),
        ("skip_connect", 4),
    )
    assert genotype.normal == expected
    assert genotype.reduce == expected
    assert genotype.normal_concat == (2, 3, 4, 5)
    assert genotype.reduce_concat == (2, 3, 4, 5)
    assert genotype.num_nodes == 4


def test_derive_genotype_excludes_none_even_when_largest() -> None:
    alphas = torch.zeros(14, len(PRIMITIVES))
    alphas[:, OP["none"]] = 10.0  # `none` dominates every edge
    # node 0: on edge 0 the best real op is sep_conv_3x3, on edge 1 it is max_pool_3x3 (weaker)
    alphas[_edge(0, 0), OP["sep_conv_3x3"]] = 2.0
    alphas[_edge(0, 1), OP["max_pool_3x3"]] = 1.0
    # node 1: edge 2 has the largest `none` of all but a weak real op; edges 0 and 1 win on real ops
    alphas[_edge(1, 2), OP["none"]] = 50.0
    alphas[_edge(1, 2), OP["sep_conv_5x5"]] = 0.5
    alphas[_edge(1, 0), OP["dil_conv_5x5"]] = 3.0
    alphas[_edge(1, 1), OP["skip_connect"]] = 2.0

    genotype = derive_genotype(alphas, alphas, PRIMITIVES)

    assert all(op != "none" for op, _ in genotype.normal + genotype.reduce)
    assert genotype.normal[0:2] == (("sep_conv_3x3", 0), ("max_pool_3x3", 1))
    assert genotype.normal[2:4] == (("dil_conv_5x5", 0), ("skip_connect", 1))


def test_derive_genotype_ranks_edges_after_softmax() -> None:
    # Raw alphas would pick edge 0 (raw max 5.0), but its softmax weight is diluted by a second strong op;
    # edge 1 has a lower raw max but a larger softmax weight, as DARTS compares softmaxed weights.
    primitives = ["skip_connect", "sep_conv_3x3", "max_pool_3x3"]
    alphas = torch.zeros(num_edges(1), 3)
    alphas[0] = torch.tensor([5.0, 5.0, 5.0])
    alphas[1] = torch.tensor([4.0, 0.0, 0.0])
    genotype = derive_genotype(alphas, alphas, primitives, internal_nodes=1)
    assert genotype.normal == (("skip_connect", 1), ("skip_connect", 0))


def test_derive_genotype_without_none_counts_every_op() -> None:
    primitives = ["skip_connect", "sep_conv_3x3"]
    alphas = torch.zeros(num_edges(2), 2)
    alphas[:, 0] = 1.0  # skip_connect wins on every edge
    alphas[_edge(1, 2), 0] = 3.0
    genotype = derive_genotype(alphas, alphas, primitives, internal_nodes=2)
    assert genotype.num_nodes == 2
    assert [op for op, _ in genotype.normal] == ["skip_connect"] * 4
    assert genotype.normal[2] == ("skip_connect", 2)
    assert genotype.normal_concat == (2, 3)


def test_derive_genotype_breaks_ties_by_lowest_index() -> None:
    alphas = torch.zeros(14, len(PRIMITIVES))  # every edge and op equal
    genotype = derive_genotype(alphas, alphas, PRIMITIVES)
    # first non-`none` op, and the two lowest input indices of every node
    assert genotype.normal == tuple(("max_pool_3x3", i) for _ in range(4) for i in (0, 1))


def test_derive_genotype_is_deterministic_and_detaches() -> None:
    generator = torch.Generator().manual_seed(3)
    alphas_normal = torch.randn(14, 8, generator=generator, requires_grad=True)
    alphas_reduce = torch.randn(14, 8, generator=generator, requires_grad=True)
    first = derive_genotype(alphas_normal, alphas_reduce, PRIMITIVES)
    second = derive_genotype(alphas_normal, alphas_reduce, PRIMITIVES)
    assert first == second
    assert first.normal != first.reduce  # two independent cells


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"alphas_normal": torch.zeros(13, 8)}, r"alphas_normal: expected shape \(14, 8\)"),
        ({"alphas_reduce": torch.zeros(14, 7)}, r"alphas_reduce: expected shape \(14, 8\)"),
        ({"alphas_normal": torch.zeros(14)}, r"alphas_normal: expected shape"),
        ({"alphas_normal": torch.full((14, 8), float("nan"))}, r"alphas_normal: contains NaN"),
        ({"internal_nodes": 0}, r"internal_nodes: expected a positive integer"),
        ({"internal_nodes": 3}, r"alphas_normal: expected shape \(9, 8\)"),
        ({"primitives": ["none"] * 8}, r"primitives: names must be unique"),
        ({"primitives": "sep_conv_3x3"}, r"primitives: expected a sequence"),
    ],
)
def test_derive_genotype_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    arguments = {
        "alphas_normal": torch.zeros(14, 8),
        "alphas_reduce": torch.zeros(14, 8),
        "primitives": PRIMITIVES,
        "internal_nodes": 4,
    } | kwargs
    with pytest.raises(ValueError, match=message):
        derive_genotype(**arguments)


def test_derive_genotype_needs_a_real_op() -> None:
    with pytest.raises(ValueError, match="primitives: needs at least one operation other than 'none'"):
        derive_genotype(torch.zeros(14, 1), torch.zeros(14, 1), ["none"])


def test_keepable_operations_are_every_index_but_that_of_none() -> None:
    assert keepable_operations(PRIMITIVES) == [k for k in range(len(PRIMITIVES)) if PRIMITIVES[k] != "none"]
    assert keepable_operations(["skip_connect", "none", "conv_1x1"]) == [0, 2]
    assert keepable_operations(["conv_1x1"]) == [0]
    for only_none in (["none"], []):
        with pytest.raises(ValueError, match="primitives: needs at least one operation other than 'none'"):
            keepable_operations(only_none)


def test_derive_genotype_with_custom_primitives_validates_against_them() -> None:
    primitives = ["none", "conv_1x1"]
    alphas = torch.zeros(14, 2)
    genotype = derive_genotype(alphas, alphas, primitives)
    assert {op for op, _ in genotype.normal} == {"conv_1x1"}
    with pytest.raises(ValueError, match="unknown operation 'conv_1x1'"):
        genotype.validate()  # not a DARTS name
    assert genotype.validate(primitives) is genotype


# ---------------------------------------------------------------------------------------- object


def test_genotype_is_immutable_and_hashable(darts_v2: Genotype) -> None:
    assert isinstance(darts_v2.normal, tuple)
    assert all(isinstance(gene, tuple) for gene in darts_v2.normal)
    with pytest.raises(dataclasses.FrozenInstanceError):
        darts_v2.normal = ()  # type: ignore[misc]
    assert hash(darts_v2) == hash(Genotype(normal=list(DARTS_V2_NORMAL), reduce=list(DARTS_V2_REDUCE)))
    assert pickle.loads(pickle.dumps(darts_v2)) == darts_v2


def test_genotype_defaults_concat_to_every_node(darts_v2: Genotype) -> None:
    assert darts_v2.num_nodes == 4
    assert darts_v2.normal_concat == (2, 3, 4, 5)
    assert darts_v2.reduce_concat == (2, 3, 4, 5)
    two_nodes = Genotype(normal=DARTS_V2_NORMAL[:4], reduce=DARTS_V2_REDUCE[:4])
    assert two_nodes.num_nodes == 2
    assert two_nodes.normal_concat == (2, 3)


def test_genotype_str_and_repr_are_the_darts_form(darts_v2: Genotype) -> None:
    assert str(darts_v2) == darts_v2.to_darts()
    assert repr(darts_v2) == darts_v2.to_darts()


# ---------------------------------------------------------------------------------------- string form


def test_darts_v2_from_the_reference_text(darts_v2: Genotype) -> None:
    parsed = Genotype.from_darts(DARTS_V2_TEXT)
    assert parsed == darts_v2
    assert parsed.normal == DARTS_V2_NORMAL
    assert parsed.reduce == DARTS_V2_REDUCE
    # a list concat that is a contiguous range prints as range()
    assert parsed.to_darts() == DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)")


def test_flat_form_with_range_round_trips_exactly(darts_v2: Genotype) -> None:
    text = darts_v2.to_darts()
    assert text.startswith("Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ")
    assert "normal_concat=range(2, 6)" in text
    assert text.endswith("reduce_concat=range(2, 6))")
    parsed = Genotype.from_darts(text)
    assert parsed == darts_v2
    assert parsed.to_darts() == text


def test_non_contiguous_concat_prints_as_a_list_and_round_trips() -> None:
    genotype = Genotype(
        normal=DARTS_V2_NORMAL, normal_concat=[2, 4, 5], reduce=DARTS_V2_REDUCE, reduce_concat=[5, 3]
    )
    text = genotype.to_darts()
    assert "normal_concat=[2, 4, 5]" in text
    assert "reduce_concat=[5, 3]" in text
    parsed = Genotype.from_darts(text)
    assert parsed == genotype
    assert parsed.to_darts() == text


def test_nested_per_node_form_parses(darts_v2: Genotype) -> None:
    def nested(genes: tuple) -> str:
        nodes = [genes[i : i + 2] for i in range(0, len(genes), 2)]
        return "[" + ", ".join("[" + ", ".join(repr(gene) for gene in node) + "]" for node in nodes) + "]"

    text = (
        f"Genotype(normal={nested(DARTS_V2_NORMAL)}, normal_concat=range(2, 6), "
        f"reduce={nested(DARTS_V2_REDUCE)}, reduce_concat=[2, 3, 4, 5])"
    )
    assert "normal=[[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], [" in text
    parsed = Genotype.from_darts(text)
    assert parsed == darts_v2
    assert Genotype.from_darts(parsed.to_darts()) == darts_v2


def test_darts_form_variants_parse(darts_v2: Genotype) -> None:
    # multi-line with an assignment, module-qualified name, tuple concat
    text = (
        "DARTS_V2 = genotypes.Genotype(\n"
        f"    normal={list(DARTS_V2_NORMAL)!r},\n"
        "    normal_concat=(2, 3, 4, 5),\n"
        f"    reduce={list(DARTS_V2_REDUCE)!r},\n"
        "    reduce_concat=range(2, 6),\n"
        ")\n"
    )
    assert Genotype.from_darts(text) == darts_v2
    positional = f"Genotype({list(DARTS_V2_NORMAL)!r}, range(2, 6), {list(DARTS_V2_REDUCE)!r}, range(2, 6))"
    assert Genotype.from_darts(positional) == darts_v2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Genotype(normal=[", "text: not a DARTS genotype string"),
        ("Cell(normal=[], reduce=[])", r"text: expected a Genotype\(...\) expression"),
        ("import os", r"text: expected a Genotype\(...\) expression"),
        ("Genotype(normal=[]); Genotype(normal=[])", "text: expected exactly one"),
        (
            "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)])",
            r"text: missing Genotype fields \['reduce'\]",
        ),
        ("Genotype(normal=[], reduce=[], extra=1)", "text: unknown Genotype field 'extra'"),
        (
            "Genotype(normal=__import__('os').system('true'), reduce=[])",
            "normal: only literal values are allowed",
        ),
        (
            "Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)], normal_concat=list(range(2, 3)), "
            "reduce=[('skip_connect', 0), ('skip_connect', 1)])",
            r"normal_concat: expected range\(start, stop\) or a list",
        ),
        (
            "Genotype(normal=[[('skip_connect', 0)]], reduce=[('skip_connect', 0), ('skip_connect', 1)])",
            r"normal\[0\]: node has 1 entries; expected 2",
        ),
        (
            "Genotype(normal=[('skip_connect', 0), ('skip_connect', 3)], "
            "reduce=[('skip_connect', 0), ('skip_connect', 1)])",
            r"normal\[1\]: input index 3 out of range for node 0 \(0..1\)",
        ),
    ],
)
def test_from_darts_rejects_bad_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Genotype.from_darts(text)


def test_from_darts_rejects_hostile_sizes() -> None:
    with pytest.raises(ValueError, match="text: 100001 characters is too long"):
        Genotype.from_darts("G" * 100_001)
    with pytest.raises(ValueError, match="not a DARTS genotype string|only literal values"):
        Genotype.from_darts("Genotype(normal=" + "[" * 20_000 + "]" * 20_000 + ", reduce=[])")


def test_from_darts_never_evaluates(tmp_path) -> None:
    marker = tmp_path / "touched"
    text = f"Genotype(normal=open({str(marker)!r}, 'w'), reduce=[])"
    with pytest.raises(ValueError):
        Genotype.from_darts(text)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------- JSON


def test_json_round_trip(darts_v2: Genotype) -> None:
    data = darts_v2.to_json()
    assert data == {
        "normal": [list(gene) for gene in DARTS_V2_NORMAL],
        "normal_concat": [2, 3, 4, 5],
        "reduce": [list(gene) for gene in DARTS_V2_REDUCE],
        "reduce_concat": [2, 3, 4, 5],
    }
    text = json.dumps(data)
    assert Genotype.from_json(text) == darts_v2
    assert Genotype.from_json(json.loads(text)) == darts_v2
    assert Genotype.from_json(text.encode()) == darts_v2
    assert Genotype.from_json(text).to_json() == data


def test_json_concat_is_optional_and_kept_when_given(darts_v2: Genotype) -> None:
    data = {"normal": darts_v2.to_json()["normal"], "reduce": darts_v2.to_json()["reduce"]}
    assert Genotype.from_json(data) == darts_v2
    custom = Genotype.from_json(data | {"normal_concat": [3, 5]})
    assert custom.normal_concat == (3, 5)
    assert Genotype.from_json(custom.to_json()) == custom


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "data: not valid JSON"),
        ("[1, 2]", "data: expected a JSON object, got list"),
        ({"normal": []}, r"data: missing genotype keys \['reduce'\]"),
        ({"normal": [], "reduce": [], "cells": 8}, r"data: unknown genotype keys \['cells'\]"),
        ({"normal": "sep_conv_3x3", "reduce": []}, "normal: expected a sequence"),
        (
            {"normal": [["sep_conv_3x3", 0, 1], ["sep_conv_3x3", 1]], "reduce": []},
            r"normal\[0\]: expected an",
        ),
        (
            {"normal": [["sep_conv_3x3", "0"], ["sep_conv_3x3", 1]], "reduce": []},
            r"normal\[0\]: input index must",
        ),
        (
            {"normal": [["sep_conv_3x3", True], ["sep_conv_3x3", 1]], "reduce": []},
            r"normal\[0\]: input index must",
        ),
        ({"normal": [[3, 0], ["sep_conv_3x3", 1]], "reduce": []}, r"normal\[0\]: op name must be"),
    ],
)
def test_from_json_rejects_bad_data(data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Genotype.from_json(data)


# ---------------------------------------------------------------------------------------- validation


def _with(cell: str, position: int, gene: tuple[str, int]) -> dict:
    genes = {"normal": list(DARTS_V2_NORMAL), "reduce": list(DARTS_V2_REDUCE)}
    genes[cell][position] = gene
    return genes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            _with("normal", 3, ("sep_conv_3x3", 5)),
            r"^normal\[3\]: input index 5 out of range for node 1 \(0..2\)$",
        ),
        (
            _with("reduce", 7, ("skip_connect", 6)),
            r"^reduce\[7\]: input index 6 out of range for node 3 \(0..4\)$",
        ),
        (_with("normal", 0, ("skip_connect", -1)), r"^normal\[0\]: input index -1 out of range for node 0"),
        (_with("normal", 2, ("conv_9x9", 0)), r"^normal\[2\]: unknown operation 'conv_9x9'; expected one of"),
        (
            {"normal": DARTS_V2_NORMAL[:7], "reduce": DARTS_V2_REDUCE},
            r"^normal: 7 entries; expected an even number \(two per internal node\)$",
        ),
        (
            {"normal": DARTS_V2_NORMAL, "reduce": DARTS_V2_REDUCE[:5]},
            r"^reduce: 5 entries; expected an even number",
        ),
        (
            {"normal": DARTS_V2_NORMAL, "reduce": DARTS_V2_REDUCE[:6]},
            r"^reduce: 6 entries \(3 nodes\) but normal has 8 \(4 nodes\)",
        ),
        ({"normal": (), "reduce": ()}, r"^normal: no entries"),
        (
            {"normal": DARTS_V2_NORMAL, "normal_concat": [2, 6], "reduce": DARTS_V2_REDUCE},
            r"^normal_concat\[1\]: state index 6 out of range \(0..5\)$",
        ),
        (
            {"normal": DARTS_V2_NORMAL, "reduce": DARTS_V2_REDUCE, "reduce_concat": [-1]},
            r"^reduce_concat\[0\]: state index -1 out of range \(0..5\)$",
        ),
        (
            {"normal": DARTS_V2_NORMAL, "reduce": DARTS_V2_REDUCE, "reduce_concat": [2, 3, 3]},
            r"^reduce_concat\[2\]: state index 3 appears twice$",
        ),
        (
            {"normal": DARTS_V2_NORMAL, "reduce": DARTS_V2_REDUCE, "reduce_concat": []},
            r"^reduce_concat: empty",
        ),
        (
            {"normal": DARTS_V2_NORMAL, "reduce": DARTS_V2_REDUCE, "normal_concat": [2.0]},
            r"^normal_concat\[0\]: state index must be an integer",
        ),
    ],
)
def test_invalid_genotypes_name_the_entry(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Genotype(**kwargs)
    with pytest.raises(ValueError, match=message):
        Genotype.from_json(
            {key: [list(v) if isinstance(v, tuple) else v for v in value] for key, value in kwargs.items()}
        )


def test_a_cell_has_at_most_eight_internal_nodes() -> None:
    """MAX_INTERNAL_NODES (the search space's bound) holds for any genotype: building the network of a
    bigger one is slow enough to tie up the process that checks it."""
    from darts_core.spec.op_names import MAX_INTERNAL_NODES

    def genes(nodes: int) -> list[tuple[str, int]]:
        return [("skip_connect", 0), ("sep_conv_3x3", 1)] * nodes

    assert MAX_INTERNAL_NODES == 8
    assert Genotype(normal=genes(8), reduce=genes(8)).num_nodes == 8
    message = r"^normal: 18 entries \(9 internal nodes\); a cell has at most 8 internal nodes"
    with pytest.raises(ValueError, match=message):
        Genotype(normal=genes(9), reduce=genes(9))
    with pytest.raises(ValueError, match=r"^reduce: 200 entries \(100 internal nodes\)"):
        Genotype.from_json(
            {"normal": [list(gene) for gene in genes(8)], "reduce": [["skip_connect", 0]] * 200}
        )
    with pytest.raises(ValueError, match="at most 8 internal nodes"):
        Genotype.from_darts(f"Genotype(normal={genes(100)}, reduce={genes(100)})")


def test_validate_against_a_primitives_list(darts_v2: Genotype) -> None:
    assert darts_v2.validate() is darts_v2
    with pytest.raises(ValueError, match=r"^normal\[0\]: unknown operation 'sep_conv_3x3'"):
        darts_v2.validate(["none", "skip_connect", "max_pool_3x3"])
    with pytest.raises(ValueError, match=r"^normal\[0\]: unknown operation 'sep_conv_3x3'"):
        Genotype.from_json(darts_v2.to_json(), primitives=["skip_connect"])
    with pytest.raises(ValueError, match=r"^normal\[0\]: unknown operation 'sep_conv_3x3'"):
        Genotype.from_darts(darts_v2.to_darts(), primitives=["skip_connect"])
    custom = Genotype(
        normal=[("conv_1x1", 0), ("conv_1x1", 1)],
        reduce=[("conv_1x1", 1), ("conv_1x1", 0)],
        primitives=["conv_1x1"],
    )
    assert Genotype.from_json(custom.to_json(), primitives=["conv_1x1"]) == custom


def test_random_genotypes_are_valid_pure_and_cover_the_space_uniformly() -> None:
    from collections import Counter

    from darts_core.spec.random_genotype import random_genotype

    primitives = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    draws = [random_genotype(primitives, 3, seed=index) for index in range(600)]
    assert random_genotype(primitives, 3, seed=5) == draws[5] and draws[5] != draws[6]
    operations: Counter[str] = Counter()
    first_inputs: Counter[tuple[int, int]] = Counter()
    for genotype in draws:
        for genes in (genotype.normal, genotype.reduce):
            assert len(genes) == 6
            for node in range(3):
                (op_a, a), (op_b, b) = genes[2 * node], genes[2 * node + 1]
                assert a < b <= node + 1  # two distinct earlier states
                operations.update((op_a, op_b))
            first_inputs[(genes[4][1], genes[5][1])] += 1  # node 2: 2 of 4 states, 6 pairs
    assert set(operations) == {"max_pool_3x3", "skip_connect", "sep_conv_3x3"}  # never `none`
    total = sum(operations.values())
    assert all(abs(count / total - 1 / 3) < 0.03 for count in operations.values())
    assert len(first_inputs) == 6 and all(abs(n / 1200 - 1 / 6) < 0.04 for n in first_inputs.values())
    with pytest.raises(ValueError, match="primitives"):
        random_genotype(["none"], 2, seed=0)
    with pytest.raises(ValueError, match="internal_nodes"):
        random_genotype(primitives, 0, seed=0)


def test_a_constrained_random_draw_is_uniform_over_what_it_accepts_and_gives_up_loudly() -> None:
    from collections import Counter

    from darts_core.spec.random_genotype import random_genotype

    primitives = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]

    def convolutions(genotype: Genotype) -> int:
        return sum(op == "sep_conv_3x3" for op, _ in (*genotype.normal, *genotype.reduce))

    def at_most_two(genotype: Genotype) -> bool:
        return convolutions(genotype) <= 2

    # The first draw is the unconstrained one: a draw it accepts is unchanged.
    free = random_genotype(primitives, 2, seed=3)
    assert random_genotype(primitives, 2, seed=3, accept=lambda genotype: True) == free
    draws = [random_genotype(primitives, 2, seed=index, accept=at_most_two) for index in range(800)]
    assert all(at_most_two(genotype) for genotype in draws)
    # Uniform over the accepted genotypes: by symmetry each of the 8 edges holds the convolution alike,
    # and the count of convolutions follows the accepted part of Binomial(8, 1/3) (0, 1, 2 of them).
    weights = [math.comb(8, k) * 2 ** (8 - k) for k in range(3)]
    counts = Counter(convolutions(genotype) for genotype in draws)
    for k in range(3):
        assert abs(counts[k] / 800 - weights[k] / sum(weights)) < 0.06, (k, counts)
    with pytest.raises(ValueError, match="no genotype of 50 drawn at random was accepted"):
        random_genotype(primitives, 2, seed=0, accept=lambda genotype: False, max_draws=50)
    with pytest.raises(ValueError, match="max_draws"):
        random_genotype(primitives, 2, seed=0, max_draws=0)
