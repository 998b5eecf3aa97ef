"""DARTS-: the auxiliary skip on every edge against the independent reference of
benchmarks/reference_methods.py, beta's schedule, and the alphas and genotype left DARTS's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks import reference_methods
from darts_core.estimate import estimate_search
from darts_core.nn.cell import Cell
from darts_core.nn.edge_weights import EdgeMixing
from darts_core.nn.ops import DARTS_PRIMITIVES_2D, ReduceChannels2d
from darts_core.nn.search_network import SearchNetwork
from darts_core.search.bilevel import DartsSearch
from darts_core.search.budget import cost_table_for
from darts_core.search.loop import CHECKPOINT_NAME, run_search
from darts_core.search.methods import DartsMinus, method_for, with_auxiliary_skip
from darts_core.spec.search_spec import SearchConfig
from tests.core.test_benchmark_equivalence import _batches, _build_pair
from tests.core.test_search import TINY_SPEC, tiny_config

SKIP = list(DARTS_PRIMITIVES_2D).index("skip_connect")


def _config(method: dict | None = None, **sections: dict) -> SearchConfig:
    return tiny_config({"name": "darts_minus"} if method is None else method, **sections)


# --------------------------------------------------------------------------------------------- the spec


def test_the_section_fills_the_authors_defaults_and_composes_with_second_order_and_pc_darts() -> None:
    config = _config(
        training={"order": "second"}, search_space={"partial_channels": 2, "edge_normalization": True}
    )
    assert config.to_spec()["method"] == {"name": "darts_minus", "beta_start": 1.0, "beta_end": 0.0}
    method = method_for(config.method, config.search_space.primitives)
    assert isinstance(method, DartsMinus) and method.second_order
    assert method.skip_index == list(config.search_space.primitives).index("skip_connect")


@pytest.mark.parametrize(
    ("method", "sections", "message"),
    [
        (
            {"name": "darts_minus", "beta_start": 1.5},
            {},
            "darts_minus.beta_start: Input should be less",
        ),
        (
            {"name": "darts_minus", "beta_end": -0.1},
            {},
            "darts_minus.beta_end: Input should be greater",
        ),
        (
            {"name": "darts_minus", "beta_end": "0"},
            {},
            "darts_minus.beta_end: Input should be a valid",
        ),
        (
            {"name": "darts_minus", "beta_start": 0.2, "beta_end": 0.5},
            {},
            r"beta_end \(0.5\) must be <= beta_start \(0.2\)",
        ),
        (
            {"name": "darts_minus"},
            {"search_space": {"primitives": ["none", "max_pool_3x3", "dil_conv_3x3"]}},
            "needs 'skip_connect' among search_space.primitives",
        ),
        ({"name": "darts_minus"}, {"training": {"hessian_every": 1}}, r"training.hessian_every \(1\)"),
    ],
)
def test_bad_sections_and_combinations_are_refused_naming_the_fields(method, sections, message) -> None:
    with pytest.raises(ValueError, match=message):
        _config(method, **sections)


# --------------------------------------------------------------------------------------------- the math


def test_beta_falls_linearly_per_epoch_from_beta_start_to_beta_end() -> None:
    method = DartsMinus(SKIP, beta_start=1.0, beta_end=0.0)
    assert method.beta == 1.0  # before the first epoch too
    betas = []
    for epoch in range(1, 6):
        method.start_epoch(epoch, 5)
        betas.append(method.beta)
    assert betas == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    method = DartsMinus(SKIP, beta_start=0.8, beta_end=0.2)
    method.start_epoch(2, 3)
    assert method.beta == pytest.approx(0.5)
    method.start_epoch(1, 1)
    assert method.beta == 0.8
    with pytest.raises(ValueError, match="beta_end <= beta_start"):
        DartsMinus(SKIP, beta_start=0.1, beta_end=0.2)


def test_the_network_with_the_auxiliary_skip_matches_the_reference_forward_and_gradients() -> None:
    # Three cells: normal, reduction (stride-2 edges: the skip is FactorizedReduce), reduction.
    network, baseline = _build_pair(cells=3)
    (images, labels), _ = _batches(1)[0]
    method = DartsMinus(SKIP, beta_start=0.6, beta_end=0.0)
    method.start_epoch(2, 5)  # beta = 0.45
    assert method.beta == pytest.approx(0.45)
    logits = network(images, mixing=method.mixing(network.arch_parameters()))
    ref_logits = reference_methods.darts_minus_forward(baseline, images, method.beta)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    plain = network(images)
    assert (logits - plain).abs().max() > 1e-3  # the auxiliary skip changes the output
    loss, ref_loss = F.cross_entropy(logits, labels), F.cross_entropy(ref_logits, labels)
    grads = torch.autograd.grad(loss, [*network.arch_parameters(), *network.weight_parameters()])
    ref_grads = torch.autograd.grad(ref_loss, [*baseline.arch_parameters(), *baseline.parameters()])
    for ours, theirs in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", [False, True])
def test_an_edge_outputs_the_mixed_op_plus_beta_times_its_skip(reduction: bool) -> None:
    torch.manual_seed(3)
    primitives = ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"]
    cell = Cell(primitives, 6, 6, 4, is_reduction=reduction, is_reduction_prev=False, internal_nodes=2)
    with torch.no_grad():
        cell.weights.normal_(0.0, 0.7)  # type: ignore[union-attr]
    s0, s1 = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 8, 8)
    beta = 0.3
    out = cell([s0, s1], mixing=EdgeMixing(with_auxiliary_skip(cell.weights, 2, beta)))
    # The reference, edge by edge: the plain mixed operation (softmax weights) plus beta * skip(state).
    rows = F.softmax(cell.weights, dim=-1)
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    edge = 0
    for node in range(2):
        total = 0
        for j in range(2 + node):
            mixed_op = cell.mixed_ops[edge]
            skip = mixed_op.ops[2]
            if reduction and j < 2:
                assert isinstance(skip, ReduceChannels2d)  # FactorizedReduce at stride 2
            total = total + mixed_op(states[j], rows[edge]) + beta * skip(states[j])
            edge += 1
        states.append(total)
    torch.testing.assert_close(out, torch.cat(states[2:], dim=1), rtol=1e-5, atol=1e-6)


def test_the_auxiliary_skip_leaves_the_alpha_gradient_that_of_the_softmax() -> None:
    alphas = torch.randn(5, 4, requires_grad=True)
    probe = torch.randn(5, 4)
    (with_skip,) = torch.autograd.grad((probe * with_auxiliary_skip(alphas, 2, 0.7)).sum(), alphas)
    (plain,) = torch.autograd.grad((probe * F.softmax(alphas, dim=-1)).sum(), alphas)
    torch.testing.assert_close(with_skip, plain)
    torch.testing.assert_close(with_auxiliary_skip(alphas, 2, 0.7).sum(-1), torch.full((5,), 1.7))


def test_the_second_order_step_runs_every_pass_with_the_auxiliary_skip() -> None:
    network, _ = _build_pair(cells=3)
    method = DartsMinus(SKIP)
    search = DartsSearch(network, order="second", method=method, channels_last=False)
    seen: list[bool] = []
    original = method.mixing

    def counted(alphas):
        seen.append(all(alpha.requires_grad for alpha in alphas[:2]))
        return original(alphas)

    method.mixing = counted  # type: ignore[method-assign]
    train, valid = _batches(1)[0]
    search.step(train, valid)
    # train pass at w, valid pass at w', the two finite-difference passes, then the weight step.
    assert seen == [False, True, True, True, False]


# --------------------------------------------------------------------------------------------- a search


def test_the_reported_alphas_and_the_genotype_are_darts_and_exclude_the_auxiliary_skip(
    tiny_dataset, tmp_path
) -> None:
    config = _config(training={"epochs": 2})
    result = run_search(tiny_dataset, config, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    normal, reduce = state["search"]["alphas"][:2]
    final = result.history[-1]
    torch.testing.assert_close(torch.tensor(final.alphas["normal"]), F.softmax(normal, dim=-1))
    torch.testing.assert_close(torch.tensor(final.alphas["reduce"]), F.softmax(reduce, dim=-1))
    assert all(sum(row) == pytest.approx(1.0) for row in final.alphas["normal"])  # no beta in the rows
    assert result.genotype == final.genotype
    # DARTS would derive the same genotype from these alphas: the auxiliary skip is no candidate.
    plain = SearchNetwork.from_config(config, tiny_dataset.in_channels, tiny_dataset.num_classes)
    with torch.no_grad():
        plain.alphas_normal.copy_(normal)
        plain.alphas_reduce.copy_(reduce)
    assert plain.genotype() == final.genotype
    # It changed the search: DARTS from the same seed ends elsewhere.
    darts = run_search(tiny_dataset, config.replace(method={"name": "darts"}))
    assert darts.history[-1].alphas != final.alphas


def test_it_composes_with_pc_darts_and_the_estimate_counts_it_as_darts(tiny_dataset) -> None:
    config = _config(training={"epochs": 1}, search_space={"partial_channels": 2, "edge_normalization": True})
    result = run_search(tiny_dataset, config)
    assert result.epochs_completed == 1 and 0.0 <= result.history[0].valid_acc <= 1.0
    shape = {"in_channels": 3, "image_size": (8, 8), "num_classes": 5}
    assert estimate_search(config, **shape) == estimate_search(
        config.replace(method={"name": "darts"}), **shape
    )


def test_the_collapse_metrics_and_the_darts_plus_rule_work(tiny_dataset) -> None:
    config = _config(training={"epochs": 2, "early_stop": "darts_plus"})
    result = run_search(tiny_dataset, config)
    assert 1 <= result.epochs_completed <= 2
    for epoch in result.history:
        assert epoch.alpha_entropy is not None and epoch.alpha_entropy > 0
        assert epoch.skip_connections == sum(name == "skip_connect" for name, _ in epoch.genotype.normal)


def test_a_search_with_constraints_returns_a_genotype_within_budget(tiny_dataset) -> None:
    # Softmax alphas: the budget's expected cost and repair apply as they are.
    spec = {**copy.deepcopy(TINY_SPEC), "method": {"name": "darts_minus"}}
    table = cost_table_for(SearchConfig.from_spec(spec), (1, 6, 6), 3)
    spec["constraints"] = {"max_parameters": int(table.cost(table.cheapest())[0]) + 1}
    result = run_search(tiny_dataset, SearchConfig.from_spec(spec))
    assert table.cost(result.genotype)[0] <= spec["constraints"]["max_parameters"]
    assert all(epoch.cost is not None for epoch in result.history)


def test_each_epoch_records_the_auxiliary_skips_beta(tiny_dataset) -> None:
    result = run_search(tiny_dataset, _config(training={"epochs": 3}))
    assert [item.schedule for item in result.history] == [{"beta": 1.0}, {"beta": 0.5}, {"beta": 0.0}]
    assert {item.method for item in result.history} == {"darts_minus"}
