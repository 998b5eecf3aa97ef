"""Deriving the discrete genotype from a search's architecture weights, as DARTS does (and PC-DARTS,
with edge normalization)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from darts_core.nn.edge_weights import edge_softmax
from darts_core.spec.genotype import Gene, Genotype, _is_int, keepable_operations, num_edges

__all__ = ["derive_genotype"]


def _operation_weights(
    name: str,
    alphas: Any,
    expected_shape: tuple[int, int],
    weights_of: Callable[[torch.Tensor], torch.Tensor] | None,
) -> torch.Tensor:
    tensor = torch.as_tensor(alphas).detach().to(device="cpu", dtype=torch.float64)
    if tuple(tensor.shape) != expected_shape:
        raise ValueError(
            f"{name}: expected shape {expected_shape} (edges, primitives), got {tuple(tensor.shape)}"
        )
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    return torch.softmax(tensor, dim=-1) if weights_of is None else weights_of(tensor)


def _edge_weights(name: str, betas: Any, internal_nodes: int) -> torch.Tensor:
    tensor = torch.as_tensor(betas).detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or infinite values")
    try:
        return edge_softmax(tensor, internal_nodes)
    except ValueError as error:
        raise ValueError(f"{name}: {str(error).removeprefix('betas: ')}") from None


def _derive_cell(
    weights: torch.Tensor, primitives: Sequence[str], candidate_ops: Sequence[int], internal_nodes: int
) -> list[Gene]:
    rows = weights.tolist()
    genes: list[Gene] = []
    start = 0
    for node in range(internal_nodes):
        incoming = node + 2
        node_rows = rows[start : start + incoming]

        def best_op(row: list[float]) -> int:
            best = candidate_ops[0]
            for k in candidate_ops[1:]:
                if row[k] > row[best]:  # strict: the lowest index wins a tie
                    best = k
            return best

        # Stable sort: among edges of equal strength the lower input index comes first.
        strongest = sorted(range(incoming), key=lambda edge: -node_rows[edge][best_op(node_rows[edge])])[:2]
        for edge in strongest:
            genes.append((primitives[best_op(node_rows[edge])], edge))
        start += incoming
    return genes


def derive_genotype(
    alphas_normal: torch.Tensor,
    alphas_reduce: torch.Tensor,
    primitives: Sequence[str],
    internal_nodes: int = 4,
    *,
    betas_normal: torch.Tensor | None = None,
    betas_reduce: torch.Tensor | None = None,
    weights_of: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Genotype:
    """Derive the discrete genotype from architecture weights, exactly as DARTS (or PC-DARTS) does.

    Args:
        alphas_normal: raw (pre-softmax) weights of the normal cell, shape ``(edges, len(primitives))``
            with ``edges = internal_nodes * (internal_nodes + 3) / 2`` numbered node by node (node 0 has
            the edges from states 0 and 1, node 1 from states 0, 1, 2, ...).
        alphas_reduce: the same for the reduction cell.
        primitives: op names, one per column.
        internal_nodes: number of internal nodes per cell.
        betas_normal, betas_reduce: raw PC-DARTS edge weights ``(edges,)`` of each cell (edge
            normalization), both or neither. Given, every softmaxed row is multiplied by its edge's
            weight (:func:`edge_softmax`) before edges are ranked, as the PC-DARTS reference does; the
            chosen operation of an edge does not change (a positive factor per row).
        weights_of: maps a cell kind's raw rows ``(edges, ops)`` (float64) to its operation weights,
            e.g. a search method's (DrNAS: the Dirichlet mean); ``None``: softmax over each row.

    Each row is softmaxed (or mapped by ``weights_of``). For every node the two incoming edges whose
    strongest non-``none`` weight is largest are kept (stronger first), and on each the strongest
    non-``none`` op is chosen. When ``primitives`` has no ``none`` every op counts. Ties go to the
    lowest index. Every node is concatenated for the cell output.
    """
    if not _is_int(internal_nodes) or internal_nodes < 1:
        raise ValueError(f"internal_nodes: expected a positive integer, got {internal_nodes!r}")
    if isinstance(primitives, str) or not all(isinstance(name, str) for name in primitives):
        raise ValueError(f"primitives: expected a sequence of op names, got {primitives!r}")
    primitives = list(primitives)
    if len(set(primitives)) != len(primitives):
        raise ValueError(f"primitives: names must be unique, got {primitives}")
    candidate_ops = keepable_operations(primitives)  # raises, naming primitives, when only `none` is left
    shape = (num_edges(internal_nodes), len(primitives))
    weights_normal = _operation_weights("alphas_normal", alphas_normal, shape, weights_of)
    weights_reduce = _operation_weights("alphas_reduce", alphas_reduce, shape, weights_of)
    if (betas_normal is None) != (betas_reduce is None):
        raise ValueError("betas_normal and betas_reduce: give both (edge normalization) or neither")
    if betas_normal is not None:
        weights_normal = weights_normal * _edge_weights("betas_normal", betas_normal, internal_nodes)[:, None]
        weights_reduce = weights_reduce * _edge_weights("betas_reduce", betas_reduce, internal_nodes)[:, None]
    concat = tuple(range(2, 2 + internal_nodes))
    return Genotype(
        normal=tuple(_derive_cell(weights_normal, primitives, candidate_ops, internal_nodes)),
        normal_concat=concat,
        reduce=tuple(_derive_cell(weights_reduce, primitives, candidate_ops, internal_nodes)),
        reduce_concat=concat,
        primitives=primitives,
    )
