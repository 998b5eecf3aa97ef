"""fair_darts (FairDARTS): the spec section, the sigmoid mixing, the zero-one loss, the threshold
derivation, and the evaluation network of a genotype with dropped inputs ("none", j)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from benchmarks import reference_methods
from darts_core.estimate import estimate_training, measure_training_step
from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.nn.multiply_adds import count_multiply_adds
from darts_core.search.bilevel import DartsSearch
from darts_core.search.budget import cost_table_for
from darts_core.search.collapse import parameter_free_count
from darts_core.search.loop import run_search
from darts_core.search.methods import FairDarts, method_for, threshold_genotype, zero_one_loss
from darts_core.spec.genotype import DARTS_OP_NAMES, Genotype
from darts_core.spec.search_spec import SearchConfig
from darts_core.spec.training_spec import TrainingJobConfig
from tests.core.test_benchmark_equivalence import _batches, _build_pair
from tests.core.test_search import TINY_SPEC, tiny_config

#: A genotype whose nodes keep 0, 1 and 2 inputs; every dropped input reads a stride-1 state in the
#: reduction cell (so swapping it for an identity changes no cost).
DROPPED = Genotype(
    normal=(
        ("none", 0),
        ("none", 1),
        ("sep_conv_3x3", 0),
        ("none", 2),
        ("skip_connect", 3),
        ("dil_conv_3x3", 1),
    ),
    reduce=(
        ("max_pool_3x3", 0),
        ("sep_conv_5x5", 1),
        ("avg_pool_3x3", 1),
        ("none", 2),
        ("none", 3),
        ("none", 2),
    ),
)


def test_the_section_has_the_authors_defaults_and_builds_the_method() -> None:
    config = tiny_config({"name": "fair_darts"})
    assert config.to_spec()["method"] == {
        "name": "fair_darts", "zero_one_weight": 10.0, "threshold": 0.85, "min_inputs": 1
    }  # fmt: skip
    method = method_for(config.method)
    assert isinstance(method, FairDarts)
    assert (method.zero_one_weight, method.threshold, method.min_inputs) == (10.0, 0.85, 1)
    tiny_config({"name": "fair_darts"}, training={"early_stop": "darts_plus"})  # skip counts apply


@pytest.mark.parametrize(
    ("method", "sections", "message"),
    [
        ({"name": "fair_darts", "threshold": 1.0}, {}, "method.fair_darts.threshold: Input should be less"),
        ({"name": "fair_darts", "threshold": 0}, {}, "method.fair_darts.threshold: Input should be greater"),
        ({"name": "fair_darts", "zero_one_weight": -1.0}, {}, "method.fair_darts.zero_one_weight: Input"),
        ({"name": "fair_darts", "zero_one_weight": "10"}, {}, "method.fair_darts.zero_one_weight: Input"),
        ({"name": "fair_darts", "min_inputs": 3}, {}, "method.fair_darts.min_inputs: Input should be less"),
        ({"name": "fair_darts", "min_inputs": -1}, {}, "method.fair_darts.min_inputs: Input should be great"),
        ({"name": "fair_darts", "min_inputs": 1.0}, {}, "fair_darts.min_inputs: Input should be a val"),
        ({"name": "fair_darts"}, {"training": {"order": "second"}}, r"training.order \('second'\)"),
        ({"name": "fair_darts"}, {"search_space": {"edge_normalization": True}}, "edge_normalization"),
        ({"name": "fair_darts"}, {"search_space": {"partial_channels": 2}}, "search_space.partial_channels"),
        ({"name": "fair_darts"}, {"training": {"hessian_every": 1}}, r"training.hessian_every \(1\)"),
        ({"name": "fair_darts"}, {"constraints": {"max_multiply_adds": 10**6}}, "constraints.max_parameters"),
    ],
)
def test_bad_sections_are_refused_naming_the_field(method, sections, message) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(method, **sections)


def test_the_mixing_is_sigmoid_weighted_as_the_reference() -> None:
    network, baseline = _build_pair(cells=3)
    method = FairDarts()
    (images, labels), _ = _batches(1)[0]
    logits = network(images, mixing=method.mixing(network.arch_parameters()))
    ref_logits = reference_methods.fair_darts_forward(baseline, images)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    grads = torch.autograd.grad(F.cross_entropy(logits, labels), network.arch_parameters())
    ref_grads = torch.autograd.grad(F.cross_entropy(ref_logits, labels), baseline.arch_parameters())
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-7)
    # The eval-mode validation and the reported weights are the same sigmoids (rows need not sum to 1).
    weights = method.operation_weights(network.alphas_normal.detach())
    assert torch.equal(weights, torch.sigmoid(network.alphas_normal.detach()))
    assert torch.equal(method.eval_mixing(network.arch_parameters())[0].weights, weights)


def test_the_zero_one_loss_value_and_gradient_match_the_closed_form() -> None:
    generator = torch.Generator().manual_seed(0)
    alphas = [
        torch.randn(14, 8, generator=generator, dtype=torch.float64, requires_grad=True) for _ in range(2)
    ]
    method = FairDarts(zero_one_weight=10.0)
    term = method.arch_regularizer(alphas)
    value, ref_grads = reference_methods.zero_one_loss_and_gradient([a.detach() for a in alphas], 10.0)
    torch.testing.assert_close(term.detach(), value)
    torch.testing.assert_close(10.0 * zero_one_loss(alphas).detach(), value)
    for grad, ref in zip(torch.autograd.grad(term, alphas), ref_grads, strict=True):
        torch.testing.assert_close(grad, ref)


def test_the_architecture_step_adds_the_zero_one_gradient() -> None:
    network, _ = _build_pair(cells=3)
    train, valid = _batches(1)[0]
    plain = DartsSearch(network, method=FairDarts(zero_one_weight=0.0), channels_last=False)
    weighted = DartsSearch(network, method=FairDarts(zero_one_weight=5.0), channels_last=False)
    # arch_gradients is the loss's alone; the step adds the regularizer (as beta-DARTS's).
    base = plain.arch_gradients(train, valid)
    _, ref_grads = reference_methods.zero_one_loss_and_gradient(
        [a.detach() for a in network.arch_parameters()], 5.0
    )
    assert torch.equal(weighted.arch_gradients(train, valid)[0], base[0])
    before = [alpha.detach().clone() for alpha in network.arch_parameters()]
    weighted._architecture_step(train, valid)
    grads = [alpha.grad for alpha in weighted.alphas]  # what Adam stepped with
    for grad, loss_grad, ref in zip(grads, base, ref_grads, strict=True):
        torch.testing.assert_close(grad, loss_grad + ref, rtol=1e-5, atol=1e-7)
    assert any(not torch.equal(a, b) for a, b in zip(before, network.arch_parameters(), strict=True))


def _weights(
    rows: dict[int, tuple[int, float]], edges: int = 9, ops: int = 8, fill: float = 0.1
) -> torch.Tensor:
    weights = torch.full((edges, ops), fill, dtype=torch.float64)
    for edge, (op, value) in rows.items():
        weights[edge, op] = value
    return weights


def test_the_threshold_derivation_keeps_zero_one_or_two_inputs_per_node() -> None:
    primitives = list(DARTS_OP_NAMES)  # none, max_pool, avg_pool, skip, sep3, sep5, dil3, dil5
    # 3 nodes, 9 edges: node 0 (edges 0-1) keeps none, node 1 (2-4) one, node 2 (5-8) two of three.
    normal = _weights(
        {0: (4, 0.8), 1: (5, 0.84), 2: (6, 0.95), 3: (3, 0.5), 5: (7, 0.9), 6: (4, 0.99), 8: (3, 0.86)}
    )
    normal[0, 0] = 0.999  # 'none' is never chosen, however strong
    reduce = _weights({})
    genotype = threshold_genotype(normal, reduce, primitives, 3, 0.85)
    assert genotype.normal == (
        ("none", 1), ("none", 0),  # 0.84 and 0.8: both at most the threshold, the stronger first
        ("dil_conv_3x3", 0), ("none", 1),  # edges 2 (0.95) and 3 (0.5): one kept
        ("sep_conv_3x3", 1), ("dil_conv_5x5", 0),  # 0.99, 0.9 kept; 0.86 (edge 8) is a third
    )  # fmt: skip
    assert all(op == "none" for op, _ in genotype.reduce)
    for weights, genes in ((normal, genotype.normal), (reduce, genotype.reduce)):
        assert list(genes) == reference_methods.fair_darts_parse(weights.tolist(), primitives, 3, 0.85)
    # Random weights: the reference parse at several thresholds and minimum inputs.
    generator = torch.Generator().manual_seed(1)
    for threshold in (0.3, 0.5, 0.7, 0.95):
        weights = torch.rand(14, 8, generator=generator, dtype=torch.float64)
        for min_inputs in (0, 1, 2):
            genes = threshold_genotype(weights, weights, primitives, 4, threshold, min_inputs).normal
            expected = reference_methods.fair_darts_parse(
                weights.tolist(), primitives, 4, threshold, min_inputs
            )
            assert list(genes) == expected


def test_min_inputs_keeps_each_nodes_strongest_inputs_whatever_their_weights() -> None:
    """Every weight under the threshold (a short search): the authors' parse drops every input, and
    the default ``min_inputs: 1`` keeps each node's strongest; 2 is DARTS's top-two parse."""
    primitives = list(DARTS_OP_NAMES)
    normal = _weights({0: (4, 0.6), 1: (5, 0.7), 2: (6, 0.3), 3: (3, 0.5), 4: (7, 0.2), 5: (7, 0.9)})
    reduce = _weights({})
    dropped_all = threshold_genotype(normal, reduce, primitives, 3, 0.95, min_inputs=0)
    assert all(op == "none" for op, _ in dropped_all.normal + dropped_all.reduce)
    one = threshold_genotype(normal, reduce, primitives, 3, 0.85, min_inputs=1)
    assert one.normal == (
        ("sep_conv_5x5", 1), ("none", 0),  # 0.7 kept as the strongest, 0.6 dropped
        ("skip_connect", 1), ("none", 0),  # 0.5 (edge 3) over 0.3 (edge 2)
        ("dil_conv_5x5", 0), ("none", 1),  # 0.9 is above the threshold; the 0.1s are not
    )  # fmt: skip
    two = threshold_genotype(normal, reduce, primitives, 3, 0.85, min_inputs=2)
    assert [j for _, j in two.normal] == [1, 0, 1, 0, 0, 1]
    assert ("none", 0) not in two.normal[:4]
    # Every node of every cell kind has at least one operation, so the network sees its input.
    for genes in (one.normal, one.reduce):
        for node in range(3):
            assert any(op != "none" for op, _ in genes[2 * node : 2 * node + 2])
    with pytest.raises(ValueError, match="min_inputs must be 0, 1 or 2"):
        threshold_genotype(normal, reduce, primitives, 3, 0.85, min_inputs=3)
    with pytest.raises(ValueError, match="min_inputs must be 0, 1 or 2"):
        FairDarts(min_inputs=-1)


def test_a_network_of_dropped_inputs_trains_and_costs_what_its_kept_operations_cost() -> None:
    torch.manual_seed(0)
    network = GenotypeNetwork(DROPPED, 3, 5, init_channels=6, cells=5, auxiliary=False)
    # The same genotype with every dropped input an identity (stride 1: no weights, no multiply-adds).
    identity = Genotype(
        normal=tuple(("skip_connect", j) if op == "none" else (op, j) for op, j in DROPPED.normal),
        reduce=tuple(("skip_connect", j) if op == "none" else (op, j) for op, j in DROPPED.reduce),
    )
    other = GenotypeNetwork(identity, 3, 5, init_channels=6, cells=5, auxiliary=False)
    count = sum(p.numel() for p in network.parameters())
    assert count == sum(p.numel() for p in other.parameters())
    assert count_multiply_adds(network, (3, 12, 12)) == count_multiply_adds(other, (3, 12, 12))
    assert parameter_free_count(DROPPED) == 1  # the skip; a dropped input is no operation
    # The budget's cost table counts it so too, whether its space holds 'none' or not.
    for primitives in (list(DARTS_OP_NAMES), list(DARTS_OP_NAMES[1:])):
        spec = {
            "search_space": {"primitives": primitives, "internal_nodes": 3},
            "constraints": {"network": {"init_channels": 6, "cells": 5}},
        }
        table = cost_table_for(SearchConfig.from_spec(spec), (3, 12, 12), 5)
        assert table.cost(DROPPED) == (count, count_multiply_adds(network, (3, 12, 12)))

    images, labels = torch.randn(4, 3, 12, 12), torch.randint(0, 5, (4,))
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    network.train()
    loss = F.cross_entropy(network(images), labels)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and F.cross_entropy(network(images), labels) != loss
    # Node 0 of the normal cell kept no input: its state is zeros.
    cell = network.cells[0]
    states = [cell.preprocess0(network.stem(images)), cell.preprocess1(network.stem(images))]
    assert not cell.ops[0](states[0]).any() and not cell.ops[1](states[1]).any()


def test_a_search_reports_sigmoids_and_derives_by_the_threshold(tiny_dataset) -> None:
    result = run_search(tiny_dataset, tiny_config({"name": "fair_darts", "threshold": 0.5}))
    primitives = TINY_SPEC["search_space"]["primitives"]
    for item in result.history:
        weights = torch.tensor(item.alphas["normal"], dtype=torch.float64)
        assert ((weights > 0) & (weights < 1)).all()
        expected = reference_methods.fair_darts_parse(weights.tolist(), primitives, 2, 0.5, 1)
        assert list(item.genotype.normal) == [tuple(gene) for gene in expected]
        assert item.skip_connections == sum(op == "skip_connect" for op, _ in item.genotype.normal)
    assert result.genotype == result.history[-1].genotype


def test_the_retraining_estimate_of_dropped_inputs_matches_a_measured_step() -> None:
    # The admission of a training of such a genotype: a zero keeps nothing for the backward pass.
    config = TrainingJobConfig.from_spec(
        {"network": {"init_channels": 6, "cells": 5}, "training": {"batch_size": 4}}
    )
    estimate = estimate_training(config, (3, 12, 12), 5, DROPPED)
    measured = measure_training_step(config, (3, 12, 12), 5, DROPPED)
    assert estimate.state_bytes == measured["state_bytes"]
    assert abs(estimate.saved_bytes - measured["saved_bytes"]) <= 0.10 * measured["saved_bytes"], (
        estimate.saved_bytes, measured["saved_bytes"])  # fmt: skip
