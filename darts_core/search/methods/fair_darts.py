"""FairDARTS (Chu et al., ECCV 2020; xiaomi-automl/FairDARTS): independent sigmoid weights and the
zero-one loss.

Every mixed edge is ``sum_k sigmoid(alpha_k) * op_k(x)``: the operations do not compete through a
softmax, so a skip connection's weight cannot grow only by taking the others'. The architecture loss adds
``w01 * L01`` with ``L01 = -mean over every (edge, operation) of both cell kinds of (sigmoid(alpha) -
0.5)^2``, which pushes each weight towards 0 or 1 (the authors' ``-MSE(sigmoid(alpha), 0.5)``, weight 10).

The genotype is derived by a threshold (:func:`threshold_genotype`): per node the edges whose strongest
non-``none`` operation has a weight above ``threshold`` are kept, at most the two strongest, and at least
the ``min_inputs`` strongest whatever their weights; a node may keep fewer than two. The two strongest
edges are listed as DARTS lists them (stronger first), an edge dropped as ``("none", j)``
(:class:`~darts_core.spec.genotype.Genotype`), which the evaluation network builds as a zero: no
parameters, no multiply-adds; a node with no kept input outputs zeros.

Why ``min_inputs`` defaults to 1: the authors' parse drops every edge whose sigmoid is at most the
threshold, and until the zero-one loss has pushed the weights apart (short searches, small data) that is
every edge. On digits, 6 epochs left every weight under 0.85: the genotype was all ``none``, the retrained
network a constant (test accuracy 0.10). Keeping each node's strongest input is the smallest change that
always gives a network that sees its input; ``min_inputs: 0`` is the authors' parse exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from darts_core.nn.edge_weights import EdgeMixing
from darts_core.search.methods.base import Scorer, SearchMethod
from darts_core.spec.genotype import _NONE, Gene, Genotype, keepable_operations

if TYPE_CHECKING:
    from darts_core.nn.search_network import SearchNetwork

__all__ = ["FairDarts", "threshold_cell", "threshold_genotype", "zero_one_loss"]


def zero_one_loss(alphas: Sequence[Tensor]) -> Tensor:
    """``-mean((sigmoid(alpha) - 0.5) ** 2)`` over every entry of the ``(edges, ops)`` tensors together."""
    weights = torch.cat([torch.sigmoid(alpha).reshape(-1) for alpha in alphas])
    return -((weights - 0.5) ** 2).mean()


def threshold_cell(
    weights: Tensor,
    primitives: Sequence[str],
    internal_nodes: int,
    threshold: float,
    min_inputs: int = 0,
) -> list[Gene]:
    """One cell kind's genes from its operation weights ``(edges, ops)`` (sigmoids): per node the two
    edges whose strongest non-``none`` weight is largest (stronger first, the lower input on a tie), each
    as ``(its strongest operation, input)`` when that weight is above ``threshold`` or the edge is among
    the node's ``min_inputs`` strongest, else as the dropped input ``("none", input)``."""
    if min_inputs not in (0, 1, 2):
        raise ValueError(f"min_inputs must be 0, 1 or 2, got {min_inputs!r}")
    candidates = keepable_operations(primitives)
    rows = weights.tolist()
    genes: list[Gene] = []
    start = 0
    for node in range(internal_nodes):
        best = []  # (weight, operation) of each input edge
        for j in range(2 + node):
            row = rows[start + j]
            op = max(candidates, key=lambda k: (row[k], -k))  # the lowest index wins a tie
            best.append((row[op], op))
        strongest = sorted(range(2 + node), key=lambda j: -best[j][0])[:2]
        for rank, j in enumerate(strongest):
            weight, op = best[j]
            kept = weight > threshold or rank < min_inputs
            genes.append((primitives[op], j) if kept else (_NONE, j))
        start += 2 + node
    return genes


def threshold_genotype(
    weights_normal: Tensor,
    weights_reduce: Tensor,
    primitives: Sequence[str],
    internal_nodes: int,
    threshold: float,
    min_inputs: int = 0,
) -> Genotype:
    """The FairDARTS genotype of both cell kinds' operation weights (see :func:`threshold_cell`)."""
    concat = tuple(range(2, 2 + internal_nodes))
    normal = threshold_cell(weights_normal, primitives, internal_nodes, threshold, min_inputs)
    reduce = threshold_cell(weights_reduce, primitives, internal_nodes, threshold, min_inputs)
    return Genotype(
        normal=tuple(normal),
        normal_concat=concat,
        reduce=tuple(reduce),
        reduce_concat=concat,
        primitives=primitives,
    )


class FairDarts(SearchMethod):
    """The FairDARTS strategy (see the module docstring)."""

    name = "fair_darts"
    second_order = False

    def __init__(self, zero_one_weight: float = 10.0, threshold: float = 0.85, min_inputs: int = 1) -> None:
        if zero_one_weight < 0:
            raise ValueError(f"zero_one_weight must be >= 0, got {zero_one_weight!r}")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
        if min_inputs not in (0, 1, 2):
            raise ValueError(f"min_inputs must be 0, 1 or 2, got {min_inputs!r}")
        self.zero_one_weight, self.threshold, self.min_inputs = zero_one_weight, threshold, min_inputs

    def mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        return EdgeMixing(torch.sigmoid(alphas[0])), EdgeMixing(torch.sigmoid(alphas[1]))

    def eval_mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        return self.mixing([alpha.detach() for alpha in alphas[:2]])

    def arch_regularizer(self, alphas: Sequence[Tensor]) -> Tensor:
        return self.zero_one_weight * zero_one_loss(alphas[:2])

    def operation_weights(self, alphas: Tensor) -> Tensor:
        return torch.sigmoid(alphas)

    def derive(self, network: SearchNetwork, score: Scorer, final: bool) -> Genotype:
        return threshold_genotype(
            torch.sigmoid(network.alphas_normal.detach().cpu().double()),
            torch.sigmoid(network.alphas_reduce.detach().cpu().double()),
            network.primitive_names,
            network.internal_nodes,
            self.threshold,
            self.min_inputs,
        )
