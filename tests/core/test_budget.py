"""Search budgets (darts_core.search.budget): exact costs, the expected-cost gradient, the penalty, the
repair, and a search whose genotype must fit."""

from __future__ import annotations

import pytest
import torch

from darts_core.data.registry import load_dataset
from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.nn.multiply_adds import count_multiply_adds
from darts_core.search.budget import Budget, CostTable, budget_penalty, cost_table_for, repair_genotype
from darts_core.search.derive import derive_genotype
from darts_core.search.loop import run_search
from darts_core.spec.genotype import DARTS_OP_NAMES, Genotype
from darts_core.spec.search_spec import SearchConfig

PRIMITIVES = list(DARTS_OP_NAMES)


def _measured(
    genotype: Genotype, shape: tuple[int, int, int], classes: int, channels: int, cells: int
) -> tuple[int, int]:
    """Parameters (without the auxiliary head, as a training reports them) and multiply-adds, counted."""
    network = GenotypeNetwork(
        genotype, shape[0], classes, init_channels=channels, cells=cells, auxiliary=True
    )
    parameters = sum(
        p.numel() for name, p in network.named_parameters() if not name.startswith("auxiliary_head.")
    )
    return parameters, count_multiply_adds(network, shape)


@pytest.mark.parametrize(("shape", "channels", "cells"), [((1, 8, 8), 8, 5), ((3, 15, 15), 4, 7)])
def test_the_table_gives_the_exact_cost_of_any_genotype(shape, channels, cells) -> None:
    table = CostTable.build(PRIMITIVES, 4, shape, 10, init_channels=channels, cells=cells)
    generator = torch.Generator().manual_seed(0)
    for _ in range(4):
        alphas = torch.randn(2, 14, len(PRIMITIVES), generator=generator)
        genotype = derive_genotype(alphas[0], alphas[1], PRIMITIVES)
        assert table.cost(genotype) == _measured(genotype, shape, 10, channels, cells)
    cheapest = table.cheapest()
    assert table.cost(cheapest) == _measured(cheapest, shape, 10, channels, cells)


@pytest.fixture(scope="module")
def table() -> CostTable:
    return CostTable.build(PRIMITIVES, 4, (1, 8, 8), 10, init_channels=8, cells=5)


def test_the_expected_cost_gradient_matches_finite_differences(table: CostTable) -> None:
    generator = torch.Generator().manual_seed(1)
    alphas = torch.randn(2, 14, len(PRIMITIVES), generator=generator, dtype=torch.float64)
    alphas.requires_grad_(True)
    for position in range(2):
        (gradient,) = torch.autograd.grad(table.expected(alphas[0], alphas[1])[position], alphas)
        step = 1e-6
        for index in [(0, 0, 3), (0, 5, 7), (1, 2, 4), (1, 13, 1), (0, 9, 0)]:
            shifted = alphas.detach().clone()
            shifted[index] += step
            up = table.expected(shifted[0], shifted[1])[position]
            shifted[index] -= 2 * step
            down = table.expected(shifted[0], shifted[1])[position]
            numeric = float((up - down) / (2 * step))
            assert gradient[index].item() == pytest.approx(numeric, rel=1e-5, abs=1e-3)


def test_the_expected_cost_is_the_exact_cost_when_the_alphas_are_one_hot(table: CostTable) -> None:
    """One op per edge at weight ~1 and equal edges: each node keeps 2 of k edges, so the expectation
    is the mean over the ways of choosing them, here all edges the same op: exactly that genotype."""
    alphas = torch.full((14, len(PRIMITIVES)), -50.0, dtype=torch.float64)
    alphas[:, PRIMITIVES.index("sep_conv_3x3")] = 50.0
    genotype = derive_genotype(alphas, alphas, PRIMITIVES)
    expected = table.expected(alphas, alphas)
    assert expected.tolist() == pytest.approx(table.cost(genotype), rel=1e-9)


def test_the_penalty_is_zero_inside_the_budget_and_pulls_toward_cheaper_operations(table: CostTable) -> None:
    alphas = [torch.zeros(14, len(PRIMITIVES), dtype=torch.float64, requires_grad=True) for _ in range(2)]
    expected = table.expected(alphas[0], alphas[1]).detach()
    loose = Budget(parameters=int(expected[0]) + 1)
    assert float(budget_penalty(table, loose, 1.0, alphas).detach()) == 0.0
    tight = Budget(parameters=int(expected[0] * 0.5))
    penalty = budget_penalty(table, tight, 2.0, alphas)
    assert float(penalty.detach()) == pytest.approx(2.0 * (float(expected[0]) / tight.parameters - 1.0))
    (gradient,) = torch.autograd.grad(penalty, alphas[0])
    # A descent step lowers the weight of the costliest operation and raises that of a free one.
    assert gradient[0, PRIMITIVES.index("sep_conv_5x5")] > 0
    assert gradient[0, PRIMITIVES.index("max_pool_3x3")] < 0


def test_the_repair_makes_the_genotype_fit_losing_the_least_weight(table: CostTable) -> None:
    generator = torch.Generator().manual_seed(2)
    alphas = torch.randn(2, 14, len(PRIMITIVES), generator=generator) * 0.1
    alphas[:, :, PRIMITIVES.index("sep_conv_5x5")] += 3.0  # the costliest op everywhere
    alphas[:, :, PRIMITIVES.index("skip_connect")] += 2.0  # the next best, and nearly free
    genotype = derive_genotype(alphas[0], alphas[1], PRIMITIVES)
    unconstrained = table.cost(genotype)
    budget = Budget(parameters=int(0.6 * unconstrained[0]))
    repaired = repair_genotype(genotype, table, budget, alphas[0], alphas[1])
    assert budget.fits(table.cost(repaired))
    assert table.cost(repaired) == _measured(repaired, (1, 8, 8), 10, 8, 5)
    # Every change swapped sep_conv_5x5 for the next-best (and cheap) skip_connect, on whichever input of
    # the node loses the least weight per cost saved.
    changed = [
        (old, new)
        for kind in ("normal", "reduce")
        for old, new in zip(getattr(genotype, kind), getattr(repaired, kind), strict=True)
        if old != new
    ]
    assert changed
    assert all(old[0] == "sep_conv_5x5" and new[0] == "skip_connect" for old, new in changed)
    # Within budget, nothing changes.
    assert (
        repair_genotype(genotype, table, Budget(parameters=int(unconstrained[0])), alphas[0], alphas[1])
        == genotype
    )


def test_a_budget_below_the_cheapest_genotype_is_refused_naming_the_field_and_the_minimum(
    table: CostTable,
) -> None:
    minimum = table.cost(table.cheapest())[0]
    with pytest.raises(ValueError, match=rf"constraints.max_parameters: .*at least {round(minimum)}"):
        table.check_feasible(Budget(parameters=int(minimum) - 1))
    table.check_feasible(Budget(parameters=int(minimum)))


def test_constraints_are_validated_naming_the_field() -> None:
    with pytest.raises(ValueError, match="constraints.max_parameters"):
        SearchConfig.from_spec({"constraints": {"max_parameters": 0}})
    with pytest.raises(ValueError, match="constraints.penalty_weight"):
        SearchConfig.from_spec({"constraints": {"max_parameters": 10, "penalty_weight": -1}})
    with pytest.raises(ValueError, match="constraints.network.cells"):
        SearchConfig.from_spec({"constraints": {"network": {"cells": 0}}})
    assert not SearchConfig.from_spec({}).constraints.active


def test_a_search_with_a_budget_returns_a_genotype_that_fits_and_reports_its_cost() -> None:
    dataset = load_dataset({"name": "digits"})
    spec = {
        "network": {"cells": 3, "init_channels": 8},
        "training": {"epochs": 2, "batch_size": 64, "seed": 0},
        "resources": {"device": "cpu"},
        "constraints": {"network": {"cells": 5, "init_channels": 8}},
    }
    free = run_search(dataset, SearchConfig.from_spec(spec))
    table = cost_table_for(SearchConfig.from_spec(spec), (1, 8, 8), 10)
    unconstrained, cheapest = table.cost(free.genotype)[0], table.cost(table.cheapest())[0]
    # Halfway between the cheapest genotype and the unconstrained one: a budget that binds (a tiny
    # search's genotype is often pool-heavy already, so 60 % of it may be below the cheapest).
    spec["constraints"]["max_parameters"] = int((unconstrained + cheapest) / 2)
    assert cheapest < spec["constraints"]["max_parameters"] < unconstrained
    result = run_search(dataset, SearchConfig.from_spec(spec))
    parameters, _ = _measured(result.genotype, (1, 8, 8), 10, 8, 5)
    assert parameters <= spec["constraints"]["max_parameters"]
    for epoch in result.history:
        assert epoch.cost is not None and epoch.cost["parameters"] <= spec["constraints"]["max_parameters"]
        assert epoch.cost["parameters"] == round(table.cost(epoch.genotype)[0])
    assert free.history[-1].cost is None


def test_a_constrained_search_stopped_after_an_epoch_resumes_bit_identically(tmp_path) -> None:
    """The penalty's cost table is rebuilt on resume, not saved: the resumed run must still be the
    straight one, epoch costs and repaired genotype included."""
    from tests.core.test_search import _assert_same_state, _load_checkpoint, _without_seconds

    dataset = load_dataset(
        {"name": "synthetic", "num_samples": 64, "channels": 1, "image_size": 6, "num_classes": 3}
    )
    spec = {
        "search_space": {"primitives": ["none", "max_pool_3x3", "skip_connect", "dil_conv_3x3"]},
        "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
        "training": {"epochs": 2, "batch_size": 8, "seed": 7, "arch_lr": 0.01},
        "resources": {"device": "cpu"},
        "constraints": {"network": {"cells": 3, "init_channels": 4}, "penalty_weight": 1.0},
    }
    table = cost_table_for(SearchConfig.from_spec(spec), (1, 6, 6), 3)
    spec["constraints"]["max_parameters"] = int(table.cost(table.cheapest())[0]) + 50  # binds
    config = SearchConfig.from_spec(spec)
    straight = run_search(dataset, config, checkpoint_dir=tmp_path / "straight")

    finished: list[int] = []
    first = run_search(
        dataset, config, checkpoint_dir=tmp_path / "resumed",
        on_epoch=lambda item: finished.append(item.epoch), should_stop=lambda: bool(finished),
    )  # fmt: skip
    assert first.stopped and first.epochs_completed == 1
    torch.manual_seed(12345)  # the resume must not depend on the caller's RNG state
    resumed = run_search(dataset, config, checkpoint_dir=tmp_path / "resumed")
    assert resumed.genotype == straight.genotype
    assert table.cost(resumed.genotype)[0] <= spec["constraints"]["max_parameters"]
    saved, again = _load_checkpoint(tmp_path / "straight"), _load_checkpoint(tmp_path / "resumed")
    _assert_same_state(saved["search"], again["search"])
    assert _without_seconds(saved["history"]) == _without_seconds(again["history"])
    assert all(record["cost"] is not None for record in again["history"])
