"""darts_core.search.collapse: collapse metrics, the Hessian's dominant eigenvalue, the early-stop rules."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from darts_core.nn import recompute
from darts_core.nn.search_network import SearchNetwork
from darts_core.search.collapse import (
    CollapseMetrics,
    collapse_metrics,
    darts_plus_rule,
    dominant_hessian_eigenvalue,
    eigenvalue_rule,
    mean_alpha_entropy,
    parameter_free_count,
    skip_count,
)
from darts_core.spec.genotype import DARTS_V2, Genotype

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counts_of_the_normal_cell() -> None:
    assert skip_count(DARTS_V2) == 2
    assert parameter_free_count(DARTS_V2) == 2  # its normal cell has no pools
    collapsed = Genotype(
        normal=[("skip_connect", 0), ("skip_connect", 1), ("max_pool_3x3", 0), ("skip_connect", 2)],
        reduce=[("sep_conv_3x3", 0), ("skip_connect", 1), ("avg_pool_3x3", 0), ("skip_connect", 1)],
    )
    assert skip_count(collapsed) == 3
    assert parameter_free_count(collapsed) == 4


def test_mean_alpha_entropy_bounds() -> None:
    uniform = {"normal": torch.full((14, 8), 1 / 8), "reduce": torch.full((14, 8), 1 / 8)}
    assert mean_alpha_entropy(uniform) == pytest.approx(math.log(8))
    decided = torch.zeros(14, 8)
    decided[:, 3] = 1.0
    assert mean_alpha_entropy({"normal": decided, "reduce": decided}) == pytest.approx(0.0)
    # Mean over the edges of both kinds, nested lists accepted (the epoch record's form).
    mixed = {"normal": decided.tolist(), "reduce": uniform["reduce"].tolist()}
    assert mean_alpha_entropy(mixed) == pytest.approx(math.log(8) / 2)


def test_collapse_metrics_of_a_network() -> None:
    torch.manual_seed(0)
    network = SearchNetwork(3, 4, init_channels=4, cells=3)
    metrics = collapse_metrics(network)
    assert metrics.alpha_entropy == pytest.approx(math.log(8), abs=1e-4)  # alphas start near zero
    assert metrics.skip_connections == skip_count(network.genotype())
    assert metrics.hessian_eigenvalue is None
    with torch.no_grad():
        network.alphas_normal[:, 3] = 10.0  # every normal edge prefers skip_connect
    metrics = collapse_metrics(network, hessian_eigenvalue=1.5)
    assert metrics.skip_connections == metrics.parameter_free_ops == 8
    assert metrics.alpha_entropy == pytest.approx(math.log(8) / 2, abs=0.01)  # normal decided, reduce not
    assert metrics.hessian_eigenvalue == 1.5


def _small_network(**kwargs) -> tuple[SearchNetwork, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(0)
    network = SearchNetwork(1, 3, init_channels=4, cells=2, internal_nodes=2, **kwargs).double()
    with torch.no_grad():
        for tensor in network.arch_parameters():
            tensor.normal_(0.0, 0.5)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(6, 1, 6, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (6,), generator=generator)
    return network, (images, labels)


def _dense_dominant_eigenvalue(network: SearchNetwork, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    images, labels = batch
    arch = [tensor.detach() for tensor in network.arch_parameters()]
    shapes = [arch[0].shape, arch[1].shape]
    split = shapes[0].numel()

    def loss(flat: torch.Tensor) -> torch.Tensor:
        alphas = (flat[:split].view(shapes[0]), flat[split:].view(shapes[1]))
        return F.cross_entropy(network(images, alphas=(*alphas, *arch[2:])), labels)

    with recompute.twice_differentiable():
        hessian = torch.autograd.functional.hessian(loss, torch.cat([a.reshape(-1) for a in arch[:2]]))
    eigenvalues = torch.linalg.eigvalsh((hessian + hessian.T) / 2)
    return eigenvalues[eigenvalues.abs().argmax()].item()


def test_dominant_eigenvalue_matches_the_dense_hessian_in_float64() -> None:
    network, batch = _small_network()
    expected = _dense_dominant_eigenvalue(network, batch)
    running_mean = network.stem[1].running_mean.clone()
    result = dominant_hessian_eigenvalue(network, batch, iterations=300, tolerance=1e-12)
    assert result.converged
    assert result.value == pytest.approx(expected, rel=1e-6)
    assert abs(expected) > 1e-3  # not a degenerate comparison
    # Nothing of the network changed: no running statistics, no gradients.
    assert torch.equal(network.stem[1].running_mean, running_mean)
    assert all(p.grad is None for p in network.parameters())


def test_few_iterations_report_no_convergence() -> None:
    network, batch = _small_network()
    result = dominant_hessian_eigenvalue(network, batch, iterations=2, tolerance=0.0)
    assert result.iterations == 2 and not result.converged
    with pytest.raises(ValueError, match="iterations"):
        dominant_hessian_eigenvalue(network, batch, iterations=0)


def _history(skips: list[int], eigenvalues: list[float | None] | None = None) -> list[CollapseMetrics]:
    eigenvalues = eigenvalues or [None] * len(skips)
    return [
        CollapseMetrics(skip_connections=s, parameter_free_ops=s, alpha_entropy=1.0, hessian_eigenvalue=e)
        for s, e in zip(skips, eigenvalues, strict=True)
    ]


def test_darts_plus_fires_at_the_first_epoch_with_too_many_skips() -> None:
    healthy = _history([0, 1, 0, 1, 1, 0])
    assert all(darts_plus_rule(healthy[:n]) is None for n in range(len(healthy) + 1))
    collapsing = _history([0, 1, 1, 2])
    decision = darts_plus_rule(collapsing)
    assert decision is not None and decision.rule == "darts_plus"
    assert decision.keep_epoch == 3
    assert "epoch 4 has 2 skip connections" in decision.reason
    assert darts_plus_rule(collapsing, max_skip_connections=3) is None
    assert darts_plus_rule(_history([4]), max_skip_connections=3).keep_epoch == 0  # the initial genotype
    with pytest.raises(ValueError, match="max_skip_connections"):
        darts_plus_rule(collapsing, max_skip_connections=0)


def test_eigenvalue_rule_fires_on_sharp_growth_only() -> None:
    flat = [1.0, 1.1, 0.9, 1.0, 1.05, 1.0, 0.95, 1.1, 1.0, 1.02, 1.01, 0.99]
    healthy = _history([0] * len(flat), flat)
    assert all(eigenvalue_rule(healthy[:n], window=5, threshold=1.3) is None for n in range(len(flat) + 1))
    # A slow rise (+2 % per epoch) stays under the threshold; a sharp one fires.
    slow = [1.0 * 1.02**i for i in range(12)]
    assert eigenvalue_rule(_history([0] * 12, slow), window=5, threshold=1.3) is None
    sharp = [1.0, 1.0, 1.0, 1.0, 1.0, 1.5, 1.8, 2.2, 2.6, 3.0]
    decision = eigenvalue_rule(_history([0] * 10, sharp), window=5, threshold=1.3)
    assert decision is not None and decision.rule == "eigenvalue"
    assert decision.keep_epoch == 5  # the last epoch of the earlier window
    # Epochs without a measurement (hessian_every > 1) are skipped; windows count measurements.
    sparse: list[float | None] = [item for value in sharp for item in (None, value)]  # epochs 2, 4, ...
    decision = eigenvalue_rule(_history([0] * len(sparse), sparse), window=5, threshold=1.3)
    assert decision is not None and decision.keep_epoch == 10
    assert eigenvalue_rule(_history([0] * 19, sparse[:19]), window=5, threshold=1.3) is None  # not measured
    # Not before two full windows.
    assert eigenvalue_rule(_history([0] * 9, sharp[:9]), window=5, threshold=1.3) is None
    with pytest.raises(ValueError, match="threshold"):
        eigenvalue_rule(healthy, threshold=1.0)
    with pytest.raises(ValueError, match="window"):
        eigenvalue_rule(healthy, window=0)
