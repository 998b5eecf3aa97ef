"""random_ws (random search with weight sharing): the spec section, the uniform sampler, the forward that
runs only the drawn operations, the weight-step-only step and the final selection."""

from __future__ import annotations

import collections
import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks import reference_methods
from darts_core.nn.search_network import SearchNetwork
from darts_core.search.bilevel import DartsSearch
from darts_core.search.loop import run_search
from darts_core.search.methods import RandomWs, method_for
from darts_core.search.methods.random_ws import sample_cell
from tests.core.test_benchmark_equivalence import _batches, _build_pair
from tests.core.test_search import TINY_SPEC, tiny_config

SMALL = {"name": "random_ws", "candidates": 6, "finalists": 2, "epoch_candidates": 3}


def test_the_section_has_the_authors_defaults_and_builds_the_method() -> None:
    config = tiny_config({"name": "random_ws"})
    assert config.to_spec()["method"] == {
        "name": "random_ws", "candidates": 1000, "finalists": 10, "score_batches": 1, "epoch_candidates": 10,
    }  # fmt: skip
    method = method_for(config.method)
    assert isinstance(method, RandomWs) and not method.trains_architecture and not method.second_order


@pytest.mark.parametrize(
    ("method", "sections", "message"),
    [
        ({"name": "random_ws", "candidates": 0}, {}, "method.random_ws.candidates: Input should be greater"),
        ({"name": "random_ws", "candidates": 10001}, {}, "method.random_ws.candidates: Input should be less"),
        ({"name": "random_ws", "score_batches": 1.5}, {}, "method.random_ws.score_batches: Input should be"),
        (
            {"name": "random_ws", "candidates": 5, "finalists": 6},
            {},
            r"finalists \(6\) must be <= candidates",
        ),
        ({"name": "random_ws"}, {"training": {"order": "second"}}, r"training.order \('second'\)"),
        (
            {"name": "random_ws"},
            {"training": {"early_stop": "darts_plus"}},
            r"training.early_stop \('darts_plus'\)",
        ),
        ({"name": "random_ws"}, {"constraints": {"max_parameters": 1000}}, "constraints.max_parameters"),
        ({"name": "random_ws"}, {"search_space": {"partial_channels": 2}}, "search_space.partial_channels"),
        ({"name": "random_ws"}, {"search_space": {"edge_normalization": True}}, "edge_normalization"),
        ({"name": "random_ws"}, {"training": {"hessian_every": 1}}, r"training.hessian_every \(1\)"),
    ],
)
def test_bad_sections_are_refused_naming_the_field(method, sections, message) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(method, **sections)


def test_the_sampler_is_uniform_over_the_darts_space() -> None:
    # 2 nodes, 3 operations: 1 * 9 * 3 * 9 = 243 cells; 100 draws expected of each.
    operations, nodes = [1, 2, 3], 2
    cells = reference_methods.random_ws_cells(nodes, operations)
    assert len(set(cells)) == len(cells) == reference_methods.random_ws_space_size(nodes, 3) == 243
    torch.manual_seed(0)
    counts = collections.Counter(sample_cell(nodes, operations) for _ in range(100 * len(cells)))
    assert set(counts) == set(cells)  # every drawn cell is in the space, and every cell is drawn
    chi_square = sum((count - 100) ** 2 / 100 for count in counts.values())
    # 242 degrees of freedom: mean 242, standard deviation 22; a biased sampler lands far above.
    assert chi_square < 242 + 5 * 22, chi_square


def test_only_the_drawn_operations_run_and_match_the_reference() -> None:
    network, baseline = _build_pair(cells=3)
    method = RandomWs()
    method.bind(network)
    torch.manual_seed(4)
    draw = method.sample()
    mixing = method.mixing_of(draw, network.alphas_normal)
    (images, labels), _ = _batches(1)[0]
    logits = network(images, mixing=mixing)
    torch.testing.assert_close(logits, reference_methods.random_ws_forward(baseline, images, *draw))

    grads = torch.autograd.grad(
        F.cross_entropy(logits, labels), network.weight_parameters(), allow_unused=True
    )
    touched = {id(p) for p, grad in zip(network.weight_parameters(), grads, strict=True) if grad is not None}
    for cell, reduction in zip(network.cells, network.reduction_cells, strict=True):
        drawn = set()
        start = 0
        for node in range(network.internal_nodes):
            drawn |= {(start + j, op) for op, j in draw[1 if reduction else 0][2 * node : 2 * node + 2]}
            start += 2 + node
        for edge, mixed_op in enumerate(cell.mixed_ops):
            for op, module in enumerate(mixed_op.ops):
                used = any(id(p) in touched for p in module.parameters())
                if any(True for _ in module.parameters()):
                    assert used == ((edge, op) in drawn), (edge, network.primitive_names[op])


def test_nothing_of_one_draw_carries_into_the_next_forward() -> None:
    # The shared supernet runs another architecture every batch: a forward (and its backward) under
    # draws A then B must give what B gives on an untouched copy, or one draw would leak into the next.
    network, _ = _build_pair(cells=3)
    fresh = copy.deepcopy(network)
    method = RandomWs()
    method.bind(network)
    torch.manual_seed(5)
    draws = [method.sample() for _ in range(3)]
    (images, labels), _ = _batches(1)[0]
    for draw in draws[:2]:
        logits = network(images, mixing=method.mixing_of(draw, network.alphas_normal))
        F.cross_entropy(logits, labels).backward()
    last = draws[2]
    torch.testing.assert_close(
        network(images, mixing=method.mixing_of(last, network.alphas_normal)),
        fresh(images, mixing=method.mixing_of(last, fresh.alphas_normal)),
        rtol=0,
        atol=0,
    )


def test_a_step_trains_the_weights_only() -> None:
    network, _ = _build_pair(cells=3)
    alphas = [alpha.detach().clone() for alpha in network.arch_parameters()]
    weights = [weight.detach().clone() for weight in network.weight_parameters()]
    search = DartsSearch(network, method=RandomWs(), channels_last=False)
    train, valid = _batches(1)[0]
    result = search.step(train, valid).to_floats()
    assert torch.isnan(torch.tensor(result["valid_loss"])) and result["train_loss"] > 0
    assert all(torch.equal(a, b) for a, b in zip(alphas, network.arch_parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(weights, network.weight_parameters(), strict=True))
    assert not search.arch_optimizer.state  # Adam never stepped


def test_the_selection_keeps_the_best_scored_candidate_rescored_on_the_whole_split() -> None:
    primitives = TINY_SPEC["search_space"]["primitives"]
    network = SearchNetwork(1, 3, init_channels=4, cells=3, internal_nodes=2, primitives=primitives)
    method = RandomWs(candidates=5, finalists=2)
    method.bind(network)
    torch.manual_seed(0)
    draws = list(dict.fromkeys(method.sample() for _ in range(20)))[:5]
    # Scores by draw: (loss, accuracy) on the batches, then on the whole split.
    on_batches = [(1.0, 0.2), (0.9, 0.6), (1.0, 0.4), (0.5, 0.6), (1.0, 0.1)]  # ranked 3, 1, 2, 0, 4
    on_split = [(1.0, 0.0), (0.8, 0.5), (1.0, 0.9), (0.8, 0.4), (1.0, 0.0)]  # 2 is best but no finalist
    calls: list[tuple[int, int | None]] = []

    by_sampled = {}
    for index, draw in enumerate(draws):
        normal, reduce = method.mixing_of(draw, network.alphas_normal)
        by_sampled[normal.sampled, reduce.sampled] = index

    def score(mixing, batches):
        index = by_sampled[mixing[0].sampled, mixing[1].sampled]
        calls.append((index, batches))
        return (on_batches if batches is not None else on_split)[index]

    assert method.select(draws, score, 2, network.alphas_normal) == 1  # 3 led on the batches; 1 on the split
    assert sorted(index for index, batches in calls if batches is None) == [1, 3]  # the finalists only
    assert all(batches == 1 for _, batches in calls[:5])
    assert method.select(draws, score, 0, network.alphas_normal) == 3  # an epoch's pick: the batches' best


def test_a_search_reports_uniform_alphas_and_returns_the_last_selection(tiny_dataset) -> None:
    result = run_search(tiny_dataset, tiny_config(SMALL))
    assert result.epochs_completed == 2 and result.genotype == result.history[-1].genotype
    ops = len(TINY_SPEC["search_space"]["primitives"])
    for item in result.history:
        assert all(weight == 1.0 / ops for row in item.alphas["normal"] for weight in row)
        assert 0.0 <= item.valid_acc <= 1.0 and item.valid_loss > 0
        assert all(op != "none" for op, _ in item.genotype.normal + item.genotype.reduce)
