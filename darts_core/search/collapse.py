"""Guards against the collapse of DARTS: what to watch per epoch and when to stop.

Searched long enough, DARTS fills the normal cell with skip connections and other parameter-free
operations: the supernet's validation accuracy keeps rising while the derived architecture gets worse
(DARTS+, Liang et al. 2019; RobustDARTS, Zela et al., ICLR 2020). This module measures the signs of it
and holds the two published stopping rules as pure functions over the per-epoch history:

* :func:`collapse_metrics`: skip connections and parameter-free operations in the derived normal cell,
  the mean entropy of the softmaxed alphas;
* :func:`dominant_hessian_eigenvalue`: the dominant eigenvalue of the Hessian of the validation loss with
  respect to the alphas (RobustDARTS' signal), by power iteration on Hessian-vector products computed
  with ``torch.func`` on a fixed validation batch;
* :func:`darts_plus_rule` and :func:`eigenvalue_rule`: the DARTS+ and RobustDARTS early stops.

Cost of the eigenvalue: one forward/backward of the supernet on the batch that keeps its graph
(``torch.func.vjp`` of ``torch.func.grad``, with the memory-saving recomputations switched off by
:func:`darts_core.nn.recompute.twice_differentiable`), then one double-backward pass per power iteration.
Measured on the 2-core CPU of benchmarks/README.md: see the "Hessian eigenvalue" section there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darts_core.nn.recompute import twice_differentiable
from darts_core.spec.genotype import Genotype

if TYPE_CHECKING:
    from darts_core.nn.search_network import SearchNetwork

__all__ = [
    "PARAMETER_FREE_OPS",
    "CollapseMetrics",
    "EarlyStop",
    "HessianEigenvalue",
    "EARLY_STOP_RULES",
    "collapse_metrics",
    "darts_plus_rule",
    "dominant_hessian_eigenvalue",
    "eigenvalue_rule",
    "mean_alpha_entropy",
    "parameter_free_count",
    "skip_count",
]

#: Operations without learnable weights (``none`` is never a chosen operation; listed for custom code).
PARAMETER_FREE_OPS: frozenset[str] = frozenset({"none", "skip_connect", "max_pool_3x3", "avg_pool_3x3"})

#: The names ``training.early_stop`` accepts (besides ``None``).
EARLY_STOP_RULES: tuple[str, ...] = ("darts_plus", "eigenvalue")


@dataclass(frozen=True)
class CollapseMetrics:
    """The collapse signs of one epoch.

    ``skip_connections`` and ``parameter_free_ops`` count the chosen operations of the derived normal
    cell; ``alpha_entropy`` is the mean entropy (nats) of the softmaxed alpha rows of both cell kinds
    (``log(len(primitives))`` at initialisation, 0 when every edge has decided); ``hessian_eigenvalue``
    is ``None`` in the epochs it was not computed.
    """

    skip_connections: int
    parameter_free_ops: int
    alpha_entropy: float
    hessian_eigenvalue: float | None = None


@dataclass(frozen=True)
class EarlyStop:
    """A rule's decision to stop: why, and the 1-based epoch whose genotype the search keeps (0: the
    genotype of the initial alphas)."""

    rule: str
    reason: str
    keep_epoch: int


@dataclass(frozen=True)
class HessianEigenvalue:
    """Result of :func:`dominant_hessian_eigenvalue`: the eigenvalue, the power iterations run (one
    Hessian-vector product each) and whether successive estimates met the tolerance."""

    value: float
    iterations: int
    converged: bool


def skip_count(genotype: Genotype) -> int:
    """Skip connections among the chosen operations of the normal cell."""
    return sum(1 for op_name, _ in genotype.normal if op_name == "skip_connect")


def parameter_free_count(genotype: Genotype) -> int:
    """Parameter-free operations (:data:`PARAMETER_FREE_OPS`) among the normal cell's chosen operations."""
    # A ("none", j) gene is a dropped input (FairDARTS's derivation), not a chosen operation.
    return sum(1 for op_name, _ in genotype.normal if op_name in PARAMETER_FREE_OPS and op_name != "none")


def mean_alpha_entropy(softmaxed: Mapping[str, Tensor | Sequence[Sequence[float]]]) -> float:
    """Mean entropy (nats) of the rows of softmaxed alphas, over every edge of every cell kind.

    Args:
        softmaxed: ``{"normal": (edges, primitives), "reduce": ...}``, non-negative rows (tensors or
            nested lists, as :meth:`~darts_core.nn.search_network.SearchNetwork.softmaxed_alphas` or the epoch
            record give them); a row that does not sum to 1 (FairDARTS's sigmoids) is divided by its sum.
    """
    tensors = [torch.as_tensor(value, dtype=torch.float64) for value in softmaxed.values()]
    rows = torch.cat([tensor.reshape(-1, tensor.shape[-1]) for tensor in tensors])
    if rows.numel() == 0:
        raise ValueError("softmaxed: no alpha rows")
    sums = rows.sum(dim=1, keepdim=True)
    unnormalised = (sums - 1.0).abs() > 1e-6
    rows = torch.where(unnormalised, rows / sums.clamp_min(1e-30), rows)  # softmax rows stay as they are
    entropy = -(rows * rows.clamp_min(1e-30).log()).sum(dim=1)
    return float(entropy.mean())


def collapse_metrics(
    network: nn.Module, hessian_eigenvalue: float | None = None, genotype: Genotype | None = None
) -> CollapseMetrics:
    """The collapse metrics of a :class:`~darts_core.nn.search_network.SearchNetwork` now: of
    ``genotype`` when given (a method's own derivation), else of the network's DARTS genotype."""
    supernet = cast("SearchNetwork", network)  # nn.Module's __getattr__ would type its methods as Tensor
    genotype = supernet.genotype() if genotype is None else genotype
    return CollapseMetrics(
        skip_connections=skip_count(genotype),
        parameter_free_ops=parameter_free_count(genotype),
        alpha_entropy=mean_alpha_entropy(supernet.softmaxed_alphas()),
        hessian_eigenvalue=hessian_eigenvalue,
    )


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    # The sequences are never empty here, so the sum is a Tensor, not sum()'s start value 0.
    return cast(Tensor, sum((x * y).sum() for x, y in zip(a, b, strict=True)))


def dominant_hessian_eigenvalue(
    network: nn.Module,
    batch: tuple[Tensor, Tensor],
    *,
    iterations: int = 20,
    tolerance: float = 1e-3,
    seed: int = 0,
) -> HessianEigenvalue:
    """The dominant eigenvalue of the Hessian of the loss on ``batch`` with respect to the alphas.

    Power iteration: ``v <- Hv / |Hv|`` from a seeded random ``v``, the estimate being the Rayleigh
    quotient ``v . Hv``; it converges to the eigenvalue of largest magnitude (RobustDARTS' dominant
    eigenvalue). ``Hv`` is the ``torch.func.vjp`` of ``torch.func.grad`` of the cross-entropy of
    ``network(images, alphas=...)`` with respect to ``(alphas_normal, alphas_reduce)``; the other
    architecture parameters (PC-DARTS betas) and the weights are held fixed. The network runs in
    training mode (batch statistics, as during search) inside
    :func:`~darts_core.nn.recompute.twice_differentiable`; BatchNorm running statistics are neither used nor
    updated, and no ``.grad`` is touched.

    Args:
        network: a :class:`~darts_core.nn.search_network.SearchNetwork` (``forward(x, alphas=...)``,
            ``arch_parameters()``).
        batch: ``(images (N, C, H, W), labels (N,))``: keep it fixed from epoch to epoch so that the
            values are comparable.
        iterations: maximum number of power iterations (Hessian-vector products), >= 1.
        tolerance: stop when two successive estimates differ by at most ``tolerance`` times the latest.
        seed: seed of the starting vector.
    """
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1, got {iterations}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance}")
    images, labels = batch
    arch = list(cast("SearchNetwork", network).arch_parameters())  # typed as the supernet's method
    alphas = tuple(tensor.detach() for tensor in arch[:2])
    fixed = tuple(tensor.detach() for tensor in arch[2:])

    def loss_of(*candidate: Tensor) -> Tensor:
        logits = network(images, alphas=(*candidate, *fixed))
        return F.cross_entropy(logits.float(), labels)

    gradient_of = torch.func.grad(loss_of, argnums=tuple(range(len(alphas))))

    generator = torch.Generator().manual_seed(seed)
    vector = tuple(torch.randn(a.shape, generator=generator, dtype=a.dtype).to(a.device) for a in alphas)
    norm = torch.sqrt(_dot(vector, vector))
    vector = tuple(v / norm for v in vector)

    was_training = network.training
    # BatchNorm in training mode without running statistics: the same outputs (batch statistics), and no
    # buffer is mutated inside the functorch transforms (which refuse in-place updates of captured
    # tensors) nor left changed by this measurement.
    norms = [module for module in network.modules() if isinstance(module, nn.modules.batchnorm._BatchNorm)]
    tracking = [module.track_running_stats for module in norms]
    estimate, converged, count = math.nan, False, 0
    try:
        network.train()
        for module in norms:
            module.track_running_stats = False
        # Outer no_grad: the weights (which require grad for the search) build no autograd graph of their
        # own; torch.func.grad and vjp still differentiate with respect to the alphas.
        with twice_differentiable(), torch.no_grad():
            # Reverse over reverse: the gradient's graph is built once, then every Hessian-vector product
            # is one backward pass through it (H is symmetric, so the vector-Jacobian product is Hv).
            # Without has_aux, vjp returns a pair; its stub also allows the (output, vjp_fn, aux) triple.
            _, hessian_vector_product = cast(
                "tuple[Tensor, Callable[..., tuple[Tensor, ...]]]", torch.func.vjp(gradient_of, *alphas)
            )
            for step in range(1, iterations + 1):
                count = step
                product = hessian_vector_product(vector)
                new_estimate = float(_dot(vector, product))
                norm = torch.sqrt(_dot(product, product))
                if float(norm) == 0.0:
                    estimate, converged = 0.0, True
                    break
                vector = tuple(p / norm for p in product)
                if not math.isnan(estimate) and abs(new_estimate - estimate) <= tolerance * abs(new_estimate):
                    estimate, converged = new_estimate, True
                    break
                estimate = new_estimate
    finally:
        for module, flag in zip(norms, tracking, strict=True):
            module.track_running_stats = flag
        network.train(was_training)
    return HessianEigenvalue(value=estimate, iterations=count, converged=converged)


def darts_plus_rule(history: Sequence[CollapseMetrics], max_skip_connections: int = 2) -> EarlyStop | None:
    """DARTS+ (Liang et al. 2019): stop when the normal cell holds ``max_skip_connections`` or more skip
    connections, keeping the genotype of the epoch before.

    Args:
        history: one :class:`CollapseMetrics` per finished epoch, in order (the last is the epoch just
            finished).
        max_skip_connections: the number of skip connections that stops the search (>= 1).

    Returns:
        the decision, or ``None`` to go on.
    """
    if max_skip_connections < 1:
        raise ValueError(f"max_skip_connections must be >= 1, got {max_skip_connections}")
    if not history:
        return None
    epoch, skips = len(history), history[-1].skip_connections
    if skips < max_skip_connections:
        return None
    return EarlyStop(
        rule="darts_plus",
        reason=(
            f"darts_plus: the normal cell of epoch {epoch} has {skips} skip connections "
            f"(max_skip_connections {max_skip_connections}); keeping the genotype of epoch {epoch - 1}"
        ),
        keep_epoch=epoch - 1,
    )


def eigenvalue_rule(
    history: Sequence[CollapseMetrics], window: int = 5, threshold: float = 1.3
) -> EarlyStop | None:
    """RobustDARTS (Zela et al., ICLR 2020): stop when the dominant Hessian eigenvalue grows sharply.

    Over the epochs where the eigenvalue was computed, the mean of the last ``window`` values is compared
    with the mean of the ``window`` values before them; when ``recent / earlier > threshold`` the search
    stops and keeps the genotype of the last epoch of the earlier window (RobustDARTS: windows of 5 and a
    ratio ``earlier / recent < 0.75``, i.e. ``threshold`` = 1 / 0.75 ~ 1.3). Nothing fires before
    ``2 * window`` values exist, or when the earlier mean is not positive.

    Args:
        history: one :class:`CollapseMetrics` per finished epoch, in order; ``hessian_eigenvalue`` may be
            ``None`` in epochs it was not computed.
        window: number of eigenvalues averaged on each side (>= 1).
        threshold: the growth ratio that stops the search (> 1).
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if not threshold > 1.0:
        raise ValueError(f"threshold must be > 1, got {threshold}")
    measured = [
        (epoch, metrics.hessian_eigenvalue)
        for epoch, metrics in enumerate(history, start=1)
        if metrics.hessian_eigenvalue is not None
    ]
    if len(measured) < 2 * window or history[-1].hessian_eigenvalue is None:
        return None
    values = [value for _, value in measured]
    recent = sum(values[-window:]) / window
    earlier = sum(values[-2 * window : -window]) / window
    if earlier <= 0 or recent / earlier <= threshold:
        return None
    keep_epoch = measured[-window - 1][0]
    return EarlyStop(
        rule="eigenvalue",
        reason=(
            f"eigenvalue: the mean dominant Hessian eigenvalue of the last {window} measurements "
            f"({recent:.4g}) is {recent / earlier:.2f}x the mean of the {window} before ({earlier:.4g}; "
            f"threshold {threshold:g}); keeping the genotype of epoch {keep_epoch}"
        ),
        keep_epoch=keep_epoch,
    )
