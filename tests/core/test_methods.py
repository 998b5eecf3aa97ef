"""Search methods (darts_core.search.methods, the spec's ``method`` section): spec, math against the
independent references of benchmarks/reference_methods.py, resume, budgets."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from benchmarks import reference_methods
from darts_core.nn.edge_weights import EdgeMixing
from darts_core.nn.search_network import SearchNetwork
from darts_core.search.bilevel import DartsSearch
from darts_core.search.budget import cost_table_for
from darts_core.search.loop import run_search
from darts_core.search.methods import BetaDarts, Gdas, Sdarts, gumbel_straight_through, project_to_simplex
from darts_core.search.methods.gdas import one_hot_of_argmax
from darts_core.spec.search_spec import SearchConfig
from tests.core.test_benchmark_equivalence import _batches, _build_pair
from tests.core.test_search import TINY_SPEC, tiny_config

TINY_PRIMITIVES = TINY_SPEC["search_space"]["primitives"]


def _without_seconds(history) -> list[dict]:
    return [{key: value for key, value in item.to_dict().items() if key != "seconds"} for item in history]


# --------------------------------------------------------------------------------------------- the spec


def test_the_default_method_is_darts_and_an_explicit_section_changes_nothing(tiny_dataset) -> None:
    implicit, explicit = tiny_config(), tiny_config({"name": "darts"})
    assert implicit == explicit and implicit.to_spec()["method"] == {"name": "darts"}
    first, second = run_search(tiny_dataset, implicit), run_search(tiny_dataset, explicit)
    assert _without_seconds(first.history) == _without_seconds(second.history)  # alphas, losses, genotype
    assert first.genotype == second.genotype


def test_each_section_fills_its_paper_defaults_and_softmax_methods_compose() -> None:
    assert tiny_config({"name": "gdas"}).to_spec()["method"] == {
        "name": "gdas",
        "tau_max": 10.0,
        "tau_min": 0.1,
    }
    composed = tiny_config(
        {"name": "beta_darts"},
        training={"order": "second", "hessian_every": 1},
        search_space={"partial_channels": 2, "edge_normalization": True},
    )
    assert composed.to_spec()["method"] == {"name": "beta_darts", "lambda_start": 0.0, "lambda_end": 50.0}
    sdarts = tiny_config(
        {"name": "sdarts_adv"}, search_space={"partial_channels": 2, "edge_normalization": True}
    )
    assert sdarts.to_spec()["method"] == {
        "name": "sdarts_adv", "epsilon_start": 0.03, "epsilon_end": 0.3, "attack_steps": 7,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("method", "sections", "message"),
    [
        ({"name": "enas"}, {}, r"method: Input tag 'enas' found using 'name' does not match"),
        ({}, {}, "method: Unable to extract tag using discriminator 'name'"),
        ({"name": "gdas", "tau_max": 0}, {}, r"method.gdas.tau_max: Input should be greater than 0"),
        ({"name": "gdas", "tau_min": True}, {}, r"method.gdas.tau_min: Input should be a valid number"),
        ({"name": "gdas", "tau_max": 1.0, "tau_min": 2.0}, {}, r"tau_min \(2\) must be <= tau_max \(1\)"),
        ({"name": "gdas", "temperature": 1}, {}, "method.gdas.temperature: is not a known field"),
        ({"name": "darts", "tau_max": 1}, {}, "method.darts.tau_max: is not a known field"),
        (
            {"name": "gdas"},
            {"training": {"order": "second"}},
            r"method.name 'gdas' does not compose with training.order \('second'\)",
        ),
        (
            {"name": "gdas"},
            {"search_space": {"partial_channels": 2, "edge_normalization": True}},
            r"search_space.partial_channels \(2\), search_space.edge_normalization \(true\)",
        ),
        ({"name": "gdas"}, {"training": {"hessian_every": 1}}, r"training.hessian_every \(1\)"),
        (
            {"name": "beta_darts", "lambda_end": -1},
            {},
            "method.beta_darts.lambda_end: Input should be greater",
        ),
        (
            {"name": "beta_darts", "lambda_end": "5"},
            {},
            "method.beta_darts.lambda_end: Input should be a valid",
        ),
        ({"name": "sdarts_rs", "epsilon_end": 2}, {}, "method.sdarts_rs.epsilon_end: Input should be less"),
        ({"name": "sdarts_adv", "attack_steps": 0}, {}, "method.sdarts_adv.attack_steps: Input should be"),
        ({"name": "sdarts_adv", "attack_steps": 2.5}, {}, "method.sdarts_adv.attack_steps: Input should be"),
        (
            {"name": "sdarts_rs"},
            {"training": {"order": "second"}},
            r"method.name 'sdarts_rs' does not compose with training.order \('second'\): SDARTS is first",
        ),
    ],
)
def test_bad_method_sections_are_refused_naming_the_field(method, sections, message) -> None:
    with pytest.raises(ValueError, match=message):
        tiny_config(method, **sections)


# --------------------------------------------------------------------------------------------- GDAS


def test_gdas_forward_is_exactly_one_hot_and_its_gradient_the_authors_straight_through() -> None:
    network, baseline = _build_pair(cells=3)
    (images, labels), _ = _batches(1)[0]
    generator = torch.Generator().manual_seed(3)
    gumbels = tuple(
        -torch.empty(alpha.shape).exponential_(generator=generator).log()
        for alpha in network.arch_parameters()
    )
    tau = 2.0
    mixing = tuple(
        gumbel_straight_through(alpha, tau, noise)
        for alpha, noise in zip(network.arch_parameters(), gumbels, strict=True)
    )
    ref_logits, ref_hard = reference_methods.gdas_forward(baseline, images, gumbels, tau)
    for ours, theirs in zip(mixing, ref_hard, strict=True):
        one_hot = F.one_hot(theirs.detach().argmax(-1), theirs.shape[1]).float()
        assert torch.equal(ours.weights.detach(), one_hot)  # exactly, not up to rounding
        assert list(ours.sampled) == theirs.detach().argmax(-1).tolist()

    logits = network(images, mixing=mixing)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    loss, ref_loss = F.cross_entropy(logits, labels), F.cross_entropy(ref_logits, labels)
    grads = torch.autograd.grad(
        loss, [*network.arch_parameters(), *network.weight_parameters()], allow_unused=True
    )
    ref_grads = torch.autograd.grad(
        ref_loss, [*baseline.arch_parameters(), *baseline.parameters()], allow_unused=True
    )
    for ours, theirs in zip(grads, ref_grads, strict=True):
        if theirs is None:  # an operation no edge sampled: computed by neither
            assert ours is None or not ours.any()
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-6)
    # The alpha gradient is the soft weights' (softmax Jacobian), non-zero on every alpha of a used row.
    assert all(grad is not None and grad.abs().sum() > 0 for grad in grads[:2])
    unused = sum(theirs is None for theirs in ref_grads)
    assert unused > 0  # only the sampled operations ran: the others' weights got no gradient


def test_gdas_temperature_falls_linearly_from_tau_max_to_tau_min() -> None:
    gdas = Gdas(tau_max=10.0, tau_min=0.1)
    taus = []
    for epoch in range(1, 6):
        gdas.start_epoch(epoch, 5)
        taus.append(gdas.tau)
    assert taus == pytest.approx([10.0, 7.525, 5.05, 2.575, 0.1])
    gdas.start_epoch(1, 1)
    assert gdas.tau == 10.0
    with pytest.raises(ValueError, match="tau"):
        gumbel_straight_through(torch.zeros(2, 3), 0.0)


def test_gdas_draws_one_sample_per_cell_kind_per_forward() -> None:
    torch.manual_seed(0)
    alphas = torch.zeros(5, 4)
    normal, reduce = Gdas(tau_max=1.0, tau_min=1.0).mixing([alphas, alphas])
    # Equal alphas, two independent draws: the samples differ (with probability 1 - 4**-5 each).
    assert normal.sampled != reduce.sampled and normal.weights.sum() == 5 == reduce.weights.sum()


def test_a_gdas_search_with_constraints_returns_a_genotype_within_budget(tiny_dataset) -> None:
    spec = {**copy.deepcopy(TINY_SPEC), "method": {"name": "gdas"}}
    config = SearchConfig.from_spec(spec)
    table = cost_table_for(config, (1, 6, 6), 3)
    free = run_search(tiny_dataset, config)
    cheapest = table.cost(table.cheapest())[0]
    spec["constraints"] = {"max_parameters": int(cheapest) + 1}
    assert table.cost(free.genotype)[0] > spec["constraints"]["max_parameters"]  # the budget binds
    result = run_search(tiny_dataset, SearchConfig.from_spec(spec))
    assert table.cost(result.genotype)[0] <= spec["constraints"]["max_parameters"]
    assert all(epoch.cost is not None for epoch in result.history)


# --------------------------------------------------------------------------------------------- beta-DARTS


def test_the_beta_regularizer_gradient_is_lambda_softmax_over_the_edges() -> None:
    generator = torch.Generator().manual_seed(4)
    alphas = [torch.randn(9, 5, generator=generator).requires_grad_() for _ in range(2)]
    method = BetaDarts(lambda_start=2.0, lambda_end=7.0)
    method.start_epoch(3, 5)
    assert method.weight == pytest.approx(4.5)
    grads = torch.autograd.grad(method.arch_regularizer(alphas), alphas)
    for alpha, grad in zip(alphas, grads, strict=True):
        torch.testing.assert_close(grad, reference_methods.beta_regularizer_gradient(alpha.detach(), 4.5))


def test_the_beta_darts_step_adds_the_regularizer_gradient_to_the_alphas() -> None:
    torch.manual_seed(0)
    network = SearchNetwork(1, 3, init_channels=4, cells=3, internal_nodes=2, primitives=TINY_PRIMITIVES)
    twin = copy.deepcopy(network)
    train, valid = ((images[:, :1], labels % 3) for images, labels in _batches(1)[0])
    before = [alpha.detach().clone() for alpha in network.arch_parameters()]
    beta = BetaDarts(lambda_start=3.0, lambda_end=3.0)
    beta.start_epoch(1, 1)
    DartsSearch(network, method=beta, channels_last=False).step(train, valid)
    DartsSearch(twin, channels_last=False).step(train, valid)
    for alpha, plain, start in zip(network.arch_parameters(), twin.arch_parameters(), before, strict=True):
        assert alpha.grad is not None and plain.grad is not None
        torch.testing.assert_close(
            alpha.grad - plain.grad,
            reference_methods.beta_regularizer_gradient(start, 3.0),
            rtol=1e-4,
            atol=1e-7,
        )


# --------------------------------------------------------------------------------------------- SDARTS


def test_the_simplex_projection_matches_an_independent_one() -> None:
    generator = torch.Generator().manual_seed(5)
    rows = torch.cat(
        [
            torch.randn(50, 8, generator=generator, dtype=torch.float64),
            3 * torch.rand(20, 8, generator=generator, dtype=torch.float64),
            F.softmax(torch.randn(10, 8, generator=generator, dtype=torch.float64), dim=1),  # on it already
        ]
    )
    projected = project_to_simplex(rows)
    torch.testing.assert_close(projected, reference_methods.simplex_projection_by_bisection(rows))
    assert (projected >= 0).all() and torch.allclose(
        projected.sum(dim=1), torch.ones(80, dtype=torch.float64)
    )
    torch.testing.assert_close(projected[-10:], rows[-10:])


@pytest.mark.parametrize("attack_steps", [0, 7])
def test_sdarts_perturbs_the_weight_step_only_within_the_simplex(attack_steps: int) -> None:
    torch.manual_seed(0)
    method = Sdarts(0.03, 0.3, attack_steps=attack_steps)
    method.start_epoch(6, 10)
    assert method.epsilon == pytest.approx(0.03 + 0.27 * 5 / 10)
    assert method.mixing([torch.zeros(5, 4)] * 2) is None  # the architecture step: DARTS's
    alphas = [torch.randn(5, 4), torch.randn(5, 4)]
    target = torch.randn(5, 4)
    calls: list[int] = []

    def loss_of(mixing) -> torch.Tensor:
        calls.append(1)
        return (mixing[0].weights * target).sum() + mixing[1].weights.square().sum()

    normal, reduce = method.weight_mixing(alphas, loss_of)
    assert len(calls) == attack_steps
    for mixed, alpha in zip((normal, reduce), alphas, strict=True):
        assert mixed.sampled is None and (mixed.weights >= 0).all()
        torch.testing.assert_close(mixed.weights.sum(dim=1), torch.ones(5))
        assert not torch.allclose(mixed.weights, F.softmax(alpha, dim=1))
    if attack_steps:  # the attack raised the loss above the unperturbed one
        soft = tuple(EdgeMixing(F.softmax(alpha, dim=1)) for alpha in alphas)
        assert loss_of((normal, reduce)) > loss_of(soft)


def test_sdarts_composes_with_pc_darts(tiny_dataset) -> None:
    config = tiny_config(
        {"name": "sdarts_rs"},
        training={"epochs": 1},
        search_space={"partial_channels": 2, "edge_normalization": True},
    )
    result = run_search(tiny_dataset, config)
    assert result.epochs_completed == 1 and 0.0 <= result.history[0].valid_acc <= 1.0


# ---------------------------------------------------------------------- the method's operation weights


def test_a_methods_operation_weights_are_what_an_epoch_reports_and_derives_from(
    tiny_dataset, monkeypatch
) -> None:
    from darts_core.search.methods.base import SearchMethod

    def reversed_softmax(alphas: torch.Tensor) -> torch.Tensor:
        return F.softmax(-alphas, dim=-1)  # the weakest op by softmax is the strongest here

    monkeypatch.setattr(SearchMethod, "operation_weights", staticmethod(reversed_softmax))
    config = tiny_config(training={"epochs": 1})
    result = run_search(tiny_dataset, config)
    monkeypatch.undo()
    network = SearchNetwork.from_config(config, tiny_dataset.in_channels, tiny_dataset.num_classes)
    final = result.history[-1]
    with torch.no_grad():
        network.alphas_normal.copy_(torch.tensor(final.alphas["normal"]).log())
        network.alphas_reduce.copy_(torch.tensor(final.alphas["reduce"]).log())
    # The reported rows r are softmax(-alpha); a plain network with alphas log(r) derives from r too.
    assert final.genotype == network.genotype()


def test_every_epoch_records_its_method_and_the_values_of_its_schedules(tiny_dataset) -> None:
    darts = run_search(tiny_dataset, tiny_config(training={"epochs": 2}))
    assert [(item.method, item.schedule) for item in darts.history] == [("darts", None), ("darts", None)]
    gdas_config = tiny_config({"name": "gdas", "tau_max": 4.0, "tau_min": 1.0}, training={"epochs": 3})
    gdas = run_search(tiny_dataset, gdas_config)
    assert [item.to_dict()["schedule"] for item in gdas.history] == [{"tau": 4.0}, {"tau": 2.5}, {"tau": 1.0}]
    assert {item.to_dict()["method"] for item in gdas.history} == {"gdas"}
    beta, sdarts = BetaDarts(1.0, 3.0), Sdarts(0.0, 0.3)
    beta.start_epoch(2, 3)
    sdarts.start_epoch(2, 3)
    assert beta.schedule() == {"lambda": 2.0} and sdarts.schedule() == pytest.approx({"epsilon": 0.1})


def test_the_watch_view_shows_the_methods_schedule() -> None:
    from rich.console import Console

    from darts_core.client.searches import _WatchView

    view = _WatchView({"id": "s1", "name": "n", "status": "running", "epochs": 3, "epoch": 1})
    record = {"epoch": 2, "train_loss": 1.0, "method": "gdas", "schedule": {"tau": 5.05}, "genotype": None}
    view.epoch(record)
    console = Console(width=100, record=True)
    console.print(view)
    assert "gdas: tau 5.05" in console.export_text()


def test_gdas_validates_with_batch_statistics_and_leaves_the_running_ones_alone(tiny_dataset) -> None:
    from darts_core.search.loop import _evaluate

    config = tiny_config({"name": "gdas"})
    torch.manual_seed(0)
    network = SearchNetwork.from_config(config, tiny_dataset.in_channels, tiny_dataset.num_classes)
    network.train()
    with torch.no_grad():  # running statistics that fit no batch (as a mix of sampled architectures)
        for module in network.modules():
            if isinstance(module, torch.nn.BatchNorm2d) and module.running_mean is not None:
                module.running_mean.fill_(3.0)
    before = {name: buffer.clone() for name, buffer in network.named_buffers()}
    images, labels = tiny_dataset.x_train[:16], tiny_dataset.y_train[:16]
    mixing = Gdas().eval_mixing(network.arch_parameters())
    batch = _evaluate(network, images, labels, 16, None, None, mixing, batch_statistics=True)
    running = _evaluate(network, images, labels, 16, None, None, mixing)
    for name, buffer in network.named_buffers():
        assert torch.equal(buffer, before[name]), name
    with torch.no_grad():  # what batch statistics mean: BatchNorm as in train mode, on the same batch
        logits = network(images, mixing=mixing)
    assert batch is not None and running is not None
    assert batch[0] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert batch[0] != pytest.approx(running[0], rel=1e-3)
    assert Gdas.eval_batch_statistics and not BetaDarts.eval_batch_statistics


def test_gdas_validates_the_argmax_among_the_operations_a_genotype_keeps(tiny_dataset) -> None:
    """Once bound to its supernet, GDAS's validation never runs ``none`` (a genotype never keeps it):
    an edge whose strongest weight is ``none`` validates its strongest other operation."""
    config = tiny_config({"name": "gdas"})
    network = SearchNetwork.from_config(config, tiny_dataset.in_channels, tiny_dataset.num_classes)
    primitives = network.primitive_names
    none = primitives.index("none")
    with torch.no_grad():
        for alphas in network.arch_parameters():
            alphas.copy_(torch.arange(alphas.shape[1], dtype=alphas.dtype).expand_as(alphas) * 0.1)
            alphas[:, none] = 5.0  # 'none' strongest on every edge
    unbound = Gdas().eval_mixing(network.arch_parameters())
    assert set(unbound[0].sampled or ()) == {none}  # before bind: the plain argmax
    method = Gdas()
    method.bind(network)
    expected = max(k for k, name in enumerate(primitives) if name != "none")  # the largest of the rest
    for mixing in method.eval_mixing(network.arch_parameters()):
        assert set(mixing.sampled or ()) == {expected}
        assert torch.equal(mixing.weights.sum(dim=-1), torch.ones(mixing.weights.shape[0]))
        assert torch.equal(mixing.weights[:, expected], torch.ones(mixing.weights.shape[0]))
    with pytest.raises(ValueError, match="allowed"):
        one_hot_of_argmax(network.alphas_normal, [])
    # A supernet of `none` alone keeps nothing: its validation is the plain argmax, as before bind.
    only_none = SearchNetwork(1, 3, init_channels=4, cells=3, internal_nodes=2, primitives=["none"])
    method.bind(only_none)
    assert method.keepable is None
    assert set(method.eval_mixing(only_none.arch_parameters())[0].sampled or ()) == {0}
