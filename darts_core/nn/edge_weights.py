"""Edge weights: PC-DARTS edge normalization (the weight of each edge among the inputs of its node), and
:class:`EdgeMixing`, the operation weights a search method hands a cell instead of ``softmax(alphas)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from darts_core.spec.genotype import num_edges

__all__ = ["EdgeMixing", "edge_softmax"]


@dataclass(frozen=True)
class EdgeMixing:
    """The weight of every operation on every edge of one cell kind, as a method computed it.

    Attributes:
        weights: ``(num_edges, len(primitives))``, used as they are (no softmax), e.g. GDAS's
            straight-through one-hot (:mod:`darts_core.search.methods.gdas`).
        sampled: when given, one operation index per edge: only that operation is computed, its output
            times its weight (the others count as zero, as their weights' values are; their weights get no
            gradient); an entry ``None`` drops its edge (nothing computed, it adds nothing to its node;
            random search with weight sharing, every node keeping two inputs). ``None``: every operation
            is computed, weighted.
    """

    weights: torch.Tensor
    sampled: tuple[int | None, ...] | None = None


def edge_softmax(betas: torch.Tensor, internal_nodes: int) -> torch.Tensor:
    """The PC-DARTS edge weights: the softmax of ``betas`` among the inputs of each node.

    Args:
        betas: raw edge weights, ``(num_edges(internal_nodes),)``, numbered node by node as the alphas'
            rows (node 0 has the edges from states 0 and 1, node 1 from states 0, 1, 2, ...).
        internal_nodes: number of internal nodes per cell.

    Returns:
        ``(num_edges,)``; the entries of each node sum to 1.
    """
    expected = num_edges(internal_nodes)
    if betas.dim() != 1 or betas.shape[0] != expected:
        raise ValueError(
            f"betas: expected shape ({expected},) (one weight per edge of {internal_nodes} nodes), "
            f"got {tuple(betas.shape)}"
        )
    sizes = [2 + node for node in range(internal_nodes)]
    return torch.cat([F.softmax(part, dim=0) for part in betas.split(sizes)])
