"""DARTS- (Chu et al., ICLR 2021): an auxiliary skip connection on every edge, weighted by a decaying beta.

Every edge outputs ``sum_k softmax(alpha)_k * op_k(x) + beta * skip(x)``, where ``skip`` is the edge's own
``skip_connect`` operation (the identity, or FactorizedReduce on the stride-2 edges of a reduction
cell). Adding ``beta * skip(x)`` is adding ``beta`` to the skip column of the edge's weights, which is how
it is computed (:func:`with_auxiliary_skip`): no other operation runs, and it composes with PC-DARTS
partial channels (the skip sees the edge's partial channels, as every operation does) and edge
normalization (the edge weight scales the whole edge). The authors' stride-2 auxiliary skip is a
FactorizedReduce of its own; here it is the edge's ``skip_connect`` one (shared weights; the identity at
stride 1 is the same either way), so the network has the parameters of DARTS.

``beta`` is set once per epoch, as the authors' scheduler does, falling linearly from ``beta_start`` in
the first epoch to ``beta_end`` in the last (the authors' linear decay reaches ``1 / epochs`` there). The
auxiliary skip is no candidate: the alphas, their report and the genotype are DARTS's, and so is the
gradient of the alphas (a constant added to the weights); it is in the eval-mode validation too (it is
part of the supernet being trained), and in both passes of the second-order step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from darts_core.nn.edge_weights import EdgeMixing
from darts_core.search.methods.base import SearchMethod

__all__ = ["DartsMinus", "with_auxiliary_skip"]


def with_auxiliary_skip(alphas: Tensor, skip_index: int, beta: float) -> Tensor:
    """``softmax(alphas)`` with ``beta`` added to column ``skip_index``: ``(edges, ops) -> (edges, ops)``.

    Differentiable in ``alphas`` (the gradient is softmax's); the rows sum to ``1 + beta``.
    """
    if alphas.dim() != 2:
        raise ValueError(f"alphas: expected (edges, ops), got shape {tuple(alphas.shape)}")
    if not 0 <= skip_index < alphas.shape[1]:
        raise ValueError(f"skip_index must be in [0, {alphas.shape[1]}), got {skip_index}")
    weights = F.softmax(alphas, dim=-1)
    if beta == 0:
        return weights
    shift = weights.new_zeros(alphas.shape[1])
    shift[skip_index] = beta
    return weights + shift


class DartsMinus(SearchMethod):
    """The DARTS- strategy (see the module docstring).

    Args:
        skip_index: the column of ``skip_connect`` among the primitives.
        beta_start, beta_end: the auxiliary skip's weight in the first and the last epoch.
    """

    name = "darts_minus"
    second_order = True

    def __init__(self, skip_index: int, beta_start: float = 1.0, beta_end: float = 0.0) -> None:
        if skip_index < 0:
            raise ValueError(f"skip_index must be >= 0, got {skip_index!r}")
        if not 0 <= beta_end <= beta_start:
            raise ValueError(
                f"beta_start, beta_end: need 0 <= beta_end <= beta_start, got {beta_start!r}, {beta_end!r}"
            )
        self.skip_index, self.beta_start, self.beta_end = skip_index, beta_start, beta_end
        self.beta = beta_start

    def start_epoch(self, epoch: int, epochs: int) -> None:
        fraction = (epoch - 1) / (epochs - 1) if epochs > 1 else 0.0
        self.beta = self.beta_start - (self.beta_start - self.beta_end) * fraction

    def schedule(self) -> dict[str, float]:
        return {"beta": self.beta}

    def mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        normal, reduce = (with_auxiliary_skip(alpha, self.skip_index, self.beta) for alpha in alphas[:2])
        return EdgeMixing(normal), EdgeMixing(reduce)

    def eval_mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        return self.mixing([alpha.detach() for alpha in alphas[:2]])
