"""DrNAS: the Dirichlet mixing, its pathwise gradient and the anchor regularizers, against the
independent formulas of benchmarks/reference_methods.py; the spec section and how it composes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks import reference_methods
from darts_core.estimate import estimate_search, measure_step
from darts_core.search.bilevel import DartsSearch
from darts_core.search.budget import cost_table_for
from darts_core.search.loop import CHECKPOINT_NAME, run_search
from darts_core.search.methods import Drnas, dirichlet_mean, dirichlet_sample, method_for
from darts_core.spec.search_spec import SearchConfig
from tests.core.test_search import TINY_SPEC, tiny_config


def _config(method: dict | None = None, **sections: dict) -> SearchConfig:
    return tiny_config({"name": "drnas"} if method is None else method, **sections)


# --------------------------------------------------------------------------------------------- the spec


def test_the_section_fills_the_authors_defaults_and_composes_with_pc_darts() -> None:
    config = _config(search_space={"partial_channels": 2, "edge_normalization": True})
    assert config.to_spec()["method"] == {"name": "drnas", "regularizer": "l2", "regularizer_scale": 1e-3}
    method = method_for(config.method)
    assert isinstance(method, Drnas) and method.regularizer == "l2" and method.scale == 1e-3


@pytest.mark.parametrize(
    ("method", "sections", "message"),
    [
        ({"name": "drnas", "regularizer": "l1"}, {}, "method.drnas.regularizer: Input should be 'l2' or"),
        ({"name": "drnas", "regularizer_scale": -1.0}, {}, "method.drnas.regularizer_scale: Input should be"),
        ({"name": "drnas", "regularizer_scale": "1"}, {}, "method.drnas.regularizer_scale: Input should be"),
        ({"name": "drnas", "regularizer_scale": 1e3}, {}, "method.drnas.regularizer_scale: Input should be"),
        (
            {"name": "drnas"},
            {"training": {"order": "second"}},
            r"method.name 'drnas' does not compose with training.order \('second'\)",
        ),
        ({"name": "drnas"}, {"training": {"hessian_every": 2}}, r"training.hessian_every \(2\)"),
    ],
)
def test_bad_sections_and_combinations_are_refused_naming_the_fields(method, sections, message) -> None:
    with pytest.raises(ValueError, match=message):
        _config(method, **sections)


# --------------------------------------------------------------------------------------------- the math


def test_the_sample_is_the_normalized_gamma_draws_of_the_same_generator_state() -> None:
    alphas = torch.tensor([[-2.0, -0.3, 0.0, 0.7], [1.5, -1.0, 0.2, 2.5], [0.0, 0.0, 0.0, 0.0]])
    torch.manual_seed(11)
    ours = dirichlet_sample(alphas.clone().requires_grad_())
    torch.manual_seed(11)
    theirs = reference_methods.dirichlet_sample_by_gammas(alphas)
    torch.testing.assert_close(ours.detach(), theirs, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ours.detach().sum(-1), torch.ones(3))
    assert ours.grad_fn is not None  # reparameterized


@pytest.mark.parametrize("sampler", ["drnas", "gamma_reference"])
def test_the_pathwise_gradient_is_unbiased_for_the_gradient_of_the_expectation(sampler: str) -> None:
    # d/dalpha E[sum(probe * w ** 2)] in closed form against the mean of the pathwise gradients. The two
    # samplers draw the same samples (above) but differentiate them by two different reparameterizations
    # (torch's Dirichlet: the implicit derivative of each marginal Beta; the reference: through the Gamma
    # draws), so they agree in expectation, not sample by sample.
    alphas = torch.tensor([[-0.8, 0.1, 0.9, 0.4]], dtype=torch.float64, requires_grad=True)
    probe = torch.tensor([1.0, -0.5, 2.0, 0.25], dtype=torch.float64)
    expected = (probe * reference_methods.dirichlet_second_moments(alphas)).sum()
    (analytic,) = torch.autograd.grad(expected, alphas)
    torch.manual_seed(5)
    draws = 200_000
    sample = dirichlet_sample if sampler == "drnas" else reference_methods.dirichlet_sample_by_gammas
    samples = sample(alphas.expand(draws, 4))  # one row per draw
    (estimate,) = torch.autograd.grad((probe * samples**2).sum() / draws, alphas)
    torch.testing.assert_close(estimate, analytic, rtol=0.03, atol=2e-4)
    assert analytic.abs().min() > 1e-3  # a gradient worth checking


def test_the_dirichlet_mean_is_the_normalized_concentration() -> None:
    alphas = torch.tensor([[-1.0, 0.0, 2.0]])
    concentration = torch.tensor([[torch.e**-1, 1.0, 3.0]])
    torch.testing.assert_close(dirichlet_mean(alphas), concentration / concentration.sum())
    method = Drnas()
    torch.testing.assert_close(method.operation_weights(alphas), dirichlet_mean(alphas))
    normal, reduce = method.eval_mixing([alphas, alphas + 1])
    torch.testing.assert_close(normal.weights, dirichlet_mean(alphas))
    torch.testing.assert_close(reduce.weights, dirichlet_mean(alphas + 1))
    assert normal.sampled is None


@pytest.mark.parametrize("regularizer", ["l2", "kl"])
def test_the_regularizer_value_and_gradient_match_the_reference_formula(regularizer: str) -> None:
    generator = torch.Generator().manual_seed(2)
    alphas = [(torch.randn(5, 4, generator=generator) * 1.5).requires_grad_() for _ in range(2)]
    betas = torch.zeros(5, requires_grad=True)  # PC-DARTS edge weights: not regularized
    method = Drnas(regularizer, scale=0.01)
    value = method.arch_regularizer([*alphas, betas])
    assert value is not None
    if regularizer == "l2":
        expected = reference_methods.drnas_l2_anchor(alphas, 0.01)
    else:
        expected = 0.01 * sum(reference_methods.dirichlet_kl_to_uniform_closed_form(a) for a in alphas)
    torch.testing.assert_close(value.double(), expected.double(), rtol=1e-5, atol=1e-7)
    grads = torch.autograd.grad(value, [*alphas, betas], allow_unused=True)
    ref_grads = torch.autograd.grad(expected, alphas)
    for grad, ref_grad in zip(grads[:2], ref_grads, strict=True):
        torch.testing.assert_close(grad.double(), ref_grad.double(), rtol=1e-4, atol=1e-7)
    if regularizer == "l2":  # the authors' Adam weight decay: scale * alpha
        torch.testing.assert_close(grads[0], 0.01 * alphas[0].detach())
    assert grads[2] is None
    # At alpha = 0 the Dirichlet is the anchor Dirichlet(1): both terms vanish.
    zero = torch.zeros(5, 4)
    assert float(method.arch_regularizer([zero, zero])) == pytest.approx(0.0, abs=1e-6)
    assert Drnas(regularizer, scale=0.0).arch_regularizer(alphas) is None


def test_both_steps_draw_their_own_sample_from_the_global_generator() -> None:
    from darts_core.nn.search_network import SearchNetwork

    torch.manual_seed(0)
    network = SearchNetwork(3, 4, init_channels=4, cells=3, internal_nodes=2)
    search = DartsSearch(network, method=Drnas(), channels_last=False)
    calls: list[bool] = []
    original = search.method.mixing

    def counted(alphas):
        calls.append(all(alpha.requires_grad for alpha in alphas[:2]))
        return original(alphas)

    search.method.mixing = counted  # type: ignore[method-assign]
    batch = (torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,)))
    search.step(batch, batch)
    assert calls == [True, False]  # the architecture step (through the alphas), then the weight step
    state = torch.get_rng_state()  # what a checkpoint saves: the same state draws the same sample
    first = dirichlet_sample(network.alphas_normal.detach())
    torch.set_rng_state(state)
    assert torch.equal(first, dirichlet_sample(network.alphas_normal.detach()))


# --------------------------------------------------------------------------------------------- a search


def test_a_search_reports_the_dirichlet_mean_and_derives_its_genotype_from_it(tiny_dataset, tmp_path) -> None:
    config = _config(
        {"name": "drnas", "regularizer": "kl"},
        training={"epochs": 1},
        search_space={"partial_channels": 2, "edge_normalization": True},
    )
    result = run_search(tiny_dataset, config, checkpoint_dir=tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    normal, reduce = state["search"]["alphas"][:2]
    final = result.history[-1]
    torch.testing.assert_close(torch.tensor(final.alphas["normal"]), dirichlet_mean(normal))
    torch.testing.assert_close(torch.tensor(final.alphas["reduce"]), dirichlet_mean(reduce))
    assert not torch.allclose(dirichlet_mean(normal), F.softmax(normal, dim=-1))
    assert 0.0 <= final.valid_acc <= 1.0 and result.genotype == final.genotype


def test_the_admission_estimate_counts_it_as_darts_and_bounds_a_measured_step() -> None:
    spec = {"network": {"cells": 3, "init_channels": 4}, "training": {"batch_size": 4}}
    darts = SearchConfig.from_spec(spec)
    drnas = darts.replace(method={"name": "drnas"})
    shape = {"in_channels": 3, "image_size": (8, 8), "num_classes": 5}
    estimate = estimate_search(drnas, **shape)
    assert estimate == estimate_search(darts, **shape)  # every operation runs, as in DARTS
    measured = measure_step(drnas, **shape)
    assert measured["state_bytes"] <= estimate.state_bytes
    assert measured["saved_bytes"] <= estimate.saved_bytes


def test_the_collapse_metrics_and_the_darts_plus_rule_read_the_dirichlet_mean(tiny_dataset) -> None:
    config = _config(training={"epochs": 2, "early_stop": "darts_plus"})
    result = run_search(tiny_dataset, config)
    assert 1 <= result.epochs_completed <= 2
    for epoch in result.history:
        assert epoch.alpha_entropy is not None and epoch.alpha_entropy > 0
        assert epoch.skip_connections == sum(name == "skip_connect" for name, _ in epoch.genotype.normal)


def test_a_budget_weighs_the_operations_by_the_dirichlet_mean_and_the_genotype_fits(tiny_dataset) -> None:
    spec = {**copy.deepcopy(TINY_SPEC), "method": {"name": "drnas"}}
    table = cost_table_for(SearchConfig.from_spec(spec), (1, 6, 6), 3)
    spec["constraints"] = {"max_parameters": int(table.cost(table.cheapest())[0]) + 1}
    config = SearchConfig.from_spec(spec)
    result = run_search(tiny_dataset, config)
    assert table.cost(result.genotype)[0] <= spec["constraints"]["max_parameters"]
    # The reported expected cost is that of the reported (Dirichlet-mean) weights, written out here.
    final = result.history[-1]
    keep = torch.tensor([name != "none" for name in config.search_space.primitives], dtype=torch.float64)
    expected = torch.tensor(table.base, dtype=torch.float64)
    share = torch.cat([torch.full((node + 2,), 2.0 / (node + 2), dtype=torch.float64) for node in range(2)])
    for kind in ("normal", "reduce"):
        weights = torch.tensor(final.alphas[kind], dtype=torch.float64) * keep
        weights = weights / weights.sum(dim=-1, keepdim=True)
        expected = expected + (
            share[:, None] * torch.einsum("ep,epc->ec", weights, table.ops[kind].double())
        ).sum(0)
    assert final.cost is not None
    assert final.cost["expected_parameters"] == pytest.approx(float(expected[0]), rel=1e-5)
    assert final.cost["expected_multiply_adds"] == pytest.approx(float(expected[1]), rel=1e-5)


def test_the_expected_cost_takes_the_methods_weights() -> None:
    config = _config()
    table = cost_table_for(config, (1, 6, 6), 3)
    generator = torch.Generator().manual_seed(9)
    normal, reduce = (2.0 * torch.randn(5, 4, generator=generator, dtype=torch.float64) for _ in range(2))
    ours = table.expected(normal, reduce, dirichlet_mean)
    # The same expectation with the Dirichlet mean's rows given as log-weights to the softmax default.
    log_mean = table.expected(dirichlet_mean(normal).log(), dirichlet_mean(reduce).log())
    torch.testing.assert_close(ours, log_mean)
    assert not torch.allclose(ours, table.expected(normal, reduce), rtol=1e-3)  # softmax differs
