"""GDAS (Dong & Yang, CVPR 2019): one operation sampled per edge by a straight-through Gumbel-softmax.

Every train-mode forward draws, for each cell kind, one Gumbel sample per edge (all the cells of a kind
share it): ``probs = softmax((log_softmax(alpha) + g) / tau)``, ``g = -log(E)`` with ``E ~ Exp(1)``. The
edge's weights are the one-hot of ``argmax(probs)`` in value and ``probs`` in gradient (straight through),
and only the sampled operation runs. The temperature falls linearly from ``tau_max`` in the first epoch
to ``tau_min`` in the last, as the authors' code sets it per epoch. Validation in eval mode uses the
argmax of the alphas (no noise) over the operations a genotype can keep (every one but ``none``),
normalised by each batch's BatchNorm statistics (the running ones mix every sampled architecture).

Why not ``none``: the validation should measure the architecture the search would derive, and a
genotype never keeps ``none``. On digits, 10 of the 14 normal edges of a 40-epoch search had ``none`` as
their argmax, so the validated network was mostly zeros (valid accuracy 0.64) while its genotype
retrained to 0.98.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from darts_core.nn.edge_weights import EdgeMixing
from darts_core.search.methods.base import SearchMethod
from darts_core.spec.genotype import keepable_operations

if TYPE_CHECKING:
    from darts_core.nn.search_network import SearchNetwork

__all__ = ["Gdas", "gumbel_straight_through", "one_hot_of_argmax"]


def _straight_through(probs: Tensor, index: Tensor) -> EdgeMixing:
    one_hot = torch.zeros_like(probs).scatter_(-1, index[:, None], 1.0)
    # probs - probs.detach() is exactly 0 in value: the forward weights are exactly one-hot, and their
    # gradient is the identity onto probs.
    return EdgeMixing(one_hot + (probs - probs.detach()), tuple(index.tolist()))


def gumbel_straight_through(alphas: Tensor, tau: float, gumbels: Tensor | None = None) -> EdgeMixing:
    """One GDAS sample for one cell kind.

    Args:
        alphas: raw architecture weights ``(edges, ops)``.
        tau: the temperature (> 0).
        gumbels: ``(edges, ops)`` Gumbel(0, 1) noise; ``None`` draws it from torch's global generator
            (redrawn, as the authors do, in the rare case a draw is infinite).

    Returns:
        an :class:`EdgeMixing` with ``weights`` exactly one-hot (the argmax of the tempered, noisy
        probabilities) whose gradient is that of the probabilities, and ``sampled`` the chosen indices.
    """
    if alphas.dim() != 2:
        raise ValueError(f"alphas: expected (edges, ops), got shape {tuple(alphas.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau!r}")
    while True:
        noise = -torch.empty_like(alphas).exponential_().log() if gumbels is None else gumbels
        probs = F.softmax((F.log_softmax(alphas, dim=-1) + noise) / tau, dim=-1)
        if gumbels is not None or bool(torch.isfinite(noise).all() and torch.isfinite(probs).all()):
            break
    return _straight_through(probs, probs.detach().argmax(dim=-1))


def one_hot_of_argmax(alphas: Tensor, allowed: Sequence[int] | None = None) -> EdgeMixing:
    """The one-hot of each row's strongest operation, computing only that one (GDAS's validation).

    Args:
        alphas: ``(edges, ops)``.
        allowed: the operation indices that may be chosen (the lower index on a tie); ``None``: all.
    """
    detached = alphas.detach()
    if allowed is not None:
        if not allowed:
            raise ValueError("allowed: needs at least one operation index")
        masked = torch.full_like(detached, float("-inf"))
        masked[:, list(allowed)] = detached[:, list(allowed)]
        detached = masked
    index = detached.argmax(dim=-1)
    one_hot = torch.zeros_like(alphas).scatter_(-1, index[:, None], 1.0)
    return EdgeMixing(one_hot, tuple(index.tolist()))


class Gdas(SearchMethod):
    """The GDAS strategy (see the module docstring)."""

    name = "gdas"
    second_order = False
    eval_batch_statistics = True

    def __init__(self, tau_max: float = 10.0, tau_min: float = 0.1) -> None:
        if not 0 < tau_min <= tau_max:
            raise ValueError(f"tau_min, tau_max: need 0 < tau_min <= tau_max, got {tau_min!r}, {tau_max!r}")
        self.tau_max, self.tau_min = tau_max, tau_min
        self.tau = tau_max
        #: The operations validation may choose (:meth:`bind`); ``None`` before: every one.
        self.keepable: list[int] | None = None

    def bind(self, network: SearchNetwork) -> None:
        try:
            self.keepable = keepable_operations(network.primitive_names)
        except ValueError:  # a supernet of `none` alone: nothing a genotype keeps, validate the argmax
            self.keepable = None

    def start_epoch(self, epoch: int, epochs: int) -> None:
        fraction = (epoch - 1) / (epochs - 1) if epochs > 1 else 0.0
        self.tau = self.tau_max - (self.tau_max - self.tau_min) * fraction

    def schedule(self) -> dict[str, float]:
        return {"tau": self.tau}

    def mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        return gumbel_straight_through(alphas[0], self.tau), gumbel_straight_through(alphas[1], self.tau)

    def eval_mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        return one_hot_of_argmax(alphas[0], self.keepable), one_hot_of_argmax(alphas[1], self.keepable)
