"""Random search with weight sharing (Li & Talwalkar, UAI 2019; the authors' ``random_weight_share.py``).

No alphas are trained: :class:`RandomWs` has no architecture step. Every weight step trains the shared
weights of the supernet under one architecture drawn uniformly from the DARTS genotype space, one draw
per batch for each cell kind: per internal node two distinct inputs (a uniform pair) and on each a
uniform non-``none`` operation; only those operations run (:class:`~darts_core.nn.edge_weights.EdgeMixing`
with the other edges dropped). The draws come from torch's global generator, which the search
checkpoints after every epoch, so a resumed search draws what the uninterrupted one would have (the
study's baseline, :func:`~darts_core.spec.random_genotype.random_genotype`, draws from the same space as
a pure function of a seed, without torch).

The genotype is found after training, with the shared weights: ``candidates`` drawn architectures are
scored (eval mode, accuracy, then the lower loss, then the earlier draw) on the first ``score_batches``
batches of the search-valid split, the ``finalists`` best are re-scored on the whole split, and the best of
those is the genotype (the authors: 1000 candidates on one batch each, the 10 best on the whole split).
An earlier epoch reports the best of ``epoch_candidates`` draws scored the same way on the batches (no
re-scoring); the epoch's validation (``valid_loss``, ``valid_acc``) is that of the epoch's genotype on
the whole split, and its ``alphas`` are uniform (nothing is learned there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from darts_core.nn.edge_weights import EdgeMixing
from darts_core.search.methods.base import Scorer, SearchMethod
from darts_core.spec.genotype import Genotype, keepable_operations, num_edges

if TYPE_CHECKING:
    from collections.abc import Sequence

    from darts_core.nn.search_network import SearchNetwork

__all__ = ["CellDraw", "RandomWs", "cell_mixing", "sample_cell"]

#: One cell kind's drawn architecture: ``(operation index, input state)`` per gene, two per node, node
#: by node, the lower input first within a node.
CellDraw = tuple[tuple[int, int], ...]


def sample_cell(
    internal_nodes: int, operations: Sequence[int], generator: torch.Generator | None = None
) -> CellDraw:
    """A uniform draw from one cell kind's genotype space: per node a uniform pair of distinct inputs
    among its ``2 + node`` states and, on each, a uniform operation index among ``operations``.
    ``generator``: ``None`` draws from torch's global generator."""
    if not operations:
        raise ValueError("operations: needs at least one operation to draw")
    genes: list[tuple[int, int]] = []
    for node in range(internal_nodes):
        inputs = sorted(torch.randperm(2 + node, generator=generator)[:2].tolist())
        picks = torch.randint(len(operations), (2,), generator=generator).tolist()
        genes.extend((operations[pick], j) for pick, j in zip(picks, inputs, strict=True))
    return tuple(genes)


def cell_mixing(draw: CellDraw, internal_nodes: int, num_ops: int, like: Tensor) -> EdgeMixing:
    """The operation weights that run exactly ``draw``: weight 1 on each drawn (edge, operation), only
    those computed, every other edge dropped. ``(num_edges, num_ops)`` with ``like``'s dtype and device."""
    weights = torch.zeros(num_edges(internal_nodes), num_ops, dtype=like.dtype)  # filled on the CPU
    sampled: list[int | None] = [None] * num_edges(internal_nodes)
    start = 0
    for node in range(internal_nodes):
        for op, j in draw[2 * node : 2 * node + 2]:
            weights[start + j, op] = 1.0
            sampled[start + j] = op
        start += 2 + node
    return EdgeMixing(weights.to(like.device), tuple(sampled))


class RandomWs(SearchMethod):
    """Random search with weight sharing (see the module docstring)."""

    name = "random_ws"
    # Every step trains another drawn architecture: the running BatchNorm statistics fit none of them.
    eval_batch_statistics = True
    second_order = False
    trains_architecture = False

    def __init__(
        self, candidates: int = 1000, finalists: int = 10, score_batches: int = 1, epoch_candidates: int = 10
    ) -> None:
        for field, value in (
            ("candidates", candidates),
            ("finalists", finalists),
            ("score_batches", score_batches),
            ("epoch_candidates", epoch_candidates),
        ):
            if value < 1:
                raise ValueError(f"{field} must be >= 1, got {value!r}")
        if finalists > candidates:
            raise ValueError(f"finalists ({finalists}) must be <= candidates ({candidates})")
        self.candidates, self.finalists = candidates, finalists
        self.score_batches, self.epoch_candidates = score_batches, epoch_candidates
        self.primitives: list[str] = []
        self.internal_nodes = 0
        #: The architecture of the last :meth:`derive` (what :meth:`eval_mixing` validates).
        self.selected: tuple[CellDraw, CellDraw] | None = None

    def bind(self, network: SearchNetwork) -> None:
        self.primitives, self.internal_nodes = network.primitive_names, network.internal_nodes

    def _operations(self) -> list[int]:
        if not self.primitives:
            raise RuntimeError("RandomWs: bind(network) first (DartsSearch does)")
        return keepable_operations(self.primitives)

    def sample(self) -> tuple[CellDraw, CellDraw]:
        """One uniform ``(normal, reduce)`` draw from torch's global generator."""
        operations = self._operations()
        return sample_cell(self.internal_nodes, operations), sample_cell(self.internal_nodes, operations)

    def mixing_of(self, draw: tuple[CellDraw, CellDraw], like: Tensor) -> tuple[EdgeMixing, EdgeMixing]:
        """The ``(normal, reduce)`` operation weights that run ``draw``."""
        ops = len(self.primitives)
        return (
            cell_mixing(draw[0], self.internal_nodes, ops, like),
            cell_mixing(draw[1], self.internal_nodes, ops, like),
        )

    def genotype_of(self, draw: tuple[CellDraw, CellDraw]) -> Genotype:
        """The genotype of a ``(normal, reduce)`` draw."""
        normal, reduce = ([(self.primitives[op], j) for op, j in cell] for cell in draw)
        concat = tuple(range(2, 2 + self.internal_nodes))
        return Genotype(
            normal=tuple(normal),
            normal_concat=concat,
            reduce=tuple(reduce),
            reduce_concat=concat,
            primitives=self.primitives,
        )

    def mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        return self.mixing_of(self.sample(), alphas[0])

    def operation_weights(self, alphas: Tensor) -> Tensor:
        # Nothing is learned: every operation weighs the same.
        return torch.full_like(alphas, 1.0 / alphas.shape[-1])

    def eval_mixing(self, alphas: Sequence[Tensor]) -> tuple[EdgeMixing, EdgeMixing]:
        if self.selected is None:
            self.selected = self.sample()
        return self.mixing_of(self.selected, alphas[0])

    def select(
        self, draws: Sequence[tuple[CellDraw, CellDraw]], score: Scorer, finalists: int, like: Tensor
    ) -> int:
        """The index of the best of ``draws``: ranked by their score on ``score_batches`` batches
        (higher accuracy, then lower loss, then the earlier draw); with ``finalists > 0`` the best
        ``finalists`` are re-scored on the whole split and ranked the same way."""

        def rank(indices: Sequence[int], batches: int | None) -> list[int]:
            scores = {index: score(self.mixing_of(draws[index], like), batches) for index in indices}
            return sorted(indices, key=lambda index: (-scores[index][1], scores[index][0], index))

        ranked = rank(range(len(draws)), self.score_batches)
        return rank(ranked[:finalists], None)[0] if finalists else ranked[0]

    def derive(self, network: SearchNetwork, score: Scorer, final: bool) -> Genotype:
        self.bind(network)
        draws = [self.sample() for _ in range(self.candidates if final else self.epoch_candidates)]
        best = self.select(draws, score, self.finalists if final else 0, network.alphas_normal)
        self.selected = draws[best]
        return self.genotype_of(draws[best])
