"""The DARTS cell: mixed operations on a small directed acyclic graph of states.

A cell has two inputs (the outputs of the two previous cells) and ``internal_nodes`` nodes. Node ``i``
sums one edge from every earlier state (the two inputs, then the nodes before it), so there are
``internal_nodes * (internal_nodes + 3) / 2`` edges (14 for 4 nodes), numbered node by node and, within
a node, by source state. During search every edge is a :class:`MixedOp` weighted by the softmax of the
cell's architecture weights (a :class:`SpecialParameter` of shape ``(num_edges, len(primitives))``);
a cell built from a genotype has one fixed operation per edge.

Why one class serves the search cell, the fixed cell and the partial-channel (PC-DARTS) cell: it is the
``trw.arch`` seed's ``Cell``, whose one constructor takes ``genotype=`` for the fixed form and whose
users build either from the same arguments, so the three share the preprocessing, the edge numbering
and the merge of the nodes, and differ only in what runs on an edge. The network retraining builds
(:class:`~darts_core.nn.genotype_network.GenotypeCell`) is the DARTS evaluation cell instead: two edges
per node, drop-path, bare pools; a ``Cell(genotype=...)`` keeps every edge of the search graph.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from darts_core.nn.edge_weights import EdgeMixing, edge_softmax
from darts_core.nn.grouped_edges import run_edges_of_state
from darts_core.nn.mixed_op import (
    MixedOp,
    _as_primitives,
    _contiguous_gradient,
    _interleave,
    _is_channels_last,
    _needs_relu,
    _run_op,
)
from darts_core.nn.ops import (
    Identity,
    PrimitiveFactory,
    ReduceChannels2d,
    ReLUConvBN2d,
    Zero2d,
)
from darts_core.nn.special_parameter import SpecialParameter
from darts_core.spec.genotype import num_edges

__all__ = ["Cell", "default_cell_output"]


def default_cell_output(node_outputs: Sequence[torch.Tensor], nb_outputs_to_use: int = 4) -> torch.Tensor:
    """Concatenate the last ``nb_outputs_to_use`` states on the channel dimension (dim 1).

    Args:
        node_outputs: the states of the cell in order: the two (preprocessed) inputs, then the
            internal nodes, each ``(N, C, H, W)`` (or ``(N, C)`` for 1-D operations).
        nb_outputs_to_use: how many of the last states to concatenate.

    Returns:
        ``(N, nb_outputs_to_use * C, H, W)``
    """
    if not 1 <= nb_outputs_to_use <= len(node_outputs):
        raise ValueError(
            f"nb_outputs_to_use must be between 1 and the number of states ({len(node_outputs)}), "
            f"got {nb_outputs_to_use}"
        )
    return torch.cat(list(node_outputs[-nb_outputs_to_use:]), dim=1)


class Cell(nn.Module):
    """A DARTS cell (search cell, or fixed cell when ``genotype`` is given).

    Input 0 is preprocessed by :class:`~darts_core.nn.ops.ReduceChannels2d` when the previous cell
    reduced, else by a 1x1 :class:`~darts_core.nn.ops.ReLUConvBN2d`; input 1 by a 1x1 ReLUConvBN2d; both
    are identities when ``with_preprocessing=False`` (then the inputs must already have ``c``
    channels, or be whatever the user operations accept, e.g. ``(N, F)`` for 1-D operations). Edges
    from the two inputs have stride 2 in a reduction cell.

    Args:
        primitives: ordered mapping name -> ``factory(C, stride, affine)`` such as
            :data:`~darts_core.nn.ops.DARTS_PRIMITIVES_2D`, or a list of names from it.
        cpp: channels of input 0 (output of the cell before the previous one).
        cp: channels of input 1 (output of the previous cell).
        c: channels of every state inside the cell.
        is_reduction: whether this cell halves H and W.
        is_reduction_prev: whether the previous cell halved H and W (input 0 is then twice as large).
        internal_nodes: number of internal nodes.
        cell_merge_output_fn: ``fn(states) -> Tensor`` merging the list of states (two inputs then the
            nodes). When left to :func:`default_cell_output`, the cell concatenates exactly its
            ``internal_nodes`` nodes (``functools.partial(default_cell_output,
            nb_outputs_to_use=internal_nodes)``), so ``internal_nodes=4`` gives the seed behaviour.
        weights: a :class:`SpecialParameter` of shape ``(num_edges, len(primitives))`` to share
            between cells; ``None`` creates one, initialised to ``1e-3 * randn``.
        with_preprocessing: whether to preprocess the two inputs (see above).
        genotype: a list of one operation name per edge: builds the fixed cell (one operation per
            edge, weight 1, no architecture weights).
        affine: affine BatchNorm in the operations and preprocessing. ``None`` (default): ``False`` for
            a search cell (as in DARTS search), ``True`` for a cell built from a genotype.
        partial_channels: ``K`` of PC-DARTS (Xu et al., ICLR 2020): every mixed operation sees only the
            first ``c / K`` channels of its input state; the other channels bypass it (max-pooled 2x2 on
            the stride-2 edges of a reduction cell) and each node is the channel shuffle, with ``K``
            groups, of the concatenation ``[sum of the operations' outputs, sum of the bypassed
            channels]``. ``1`` (default): every channel goes through the operations (DARTS). ``c`` must
            be divisible by ``K``. Search cells only.
        edge_normalization: PC-DARTS edge normalization: every edge's output is multiplied by the softmax,
            among the inputs of its node, of the edge weights ``betas`` (one per edge). Search cells only.
        edge_weights: a :class:`SpecialParameter` of shape ``(num_edges,)`` (the raw betas) to share
            between cells; ``None`` creates one (``1e-3 * randn``) when ``edge_normalization``.

    Attributes:
        num_edges: number of edges, ``internal_nodes * (internal_nodes + 3) // 2``.
        out_channels: channels of the output for the default merge (``c * nb_outputs_to_use``), or
            ``None`` for a custom merge function.

    Shape:
        ``parents``: ``[(N, cpp, H0, W0), (N, cp, H, W)]`` where ``H0 = 2 * H`` (or ``2 * H - 1``) when
        ``is_reduction_prev`` else ``H``; output: ``(N, out_channels, H', W')`` with
        ``H' = ceil(H / 2)`` for a reduction cell, else ``H``.
    """

    def __init__(
        self,
        primitives: Mapping[str, PrimitiveFactory] | Sequence[str],
        cpp: int,
        cp: int,
        c: int,
        is_reduction: bool,
        is_reduction_prev: bool,
        internal_nodes: int = 4,
        cell_merge_output_fn: Callable[[list[torch.Tensor]], torch.Tensor] = default_cell_output,
        weights: SpecialParameter | None = None,
        with_preprocessing: bool = True,
        genotype: Sequence[str] | None = None,
        *,
        affine: bool | None = None,
        partial_channels: int = 1,
        edge_normalization: bool = False,
        edge_weights: SpecialParameter | None = None,
    ):
        super().__init__()
        primitives = _as_primitives(primitives)
        if internal_nodes < 1:
            raise ValueError(f"internal_nodes must be >= 1, got {internal_nodes}")
        if type(partial_channels) is not int or partial_channels < 1:
            raise ValueError(f"partial_channels must be a positive integer, got {partial_channels!r}")
        if partial_channels > 1 and c % partial_channels:
            raise ValueError(f"partial_channels ({partial_channels}) must divide the cell's channels c ({c})")
        if genotype is not None and (partial_channels != 1 or edge_normalization or edge_weights is not None):
            raise ValueError(
                "partial_channels, edge_normalization and edge_weights apply to search cells only, "
                "not to a cell built from a genotype"
            )
        if edge_weights is not None and not edge_normalization:
            raise ValueError("edge_weights are given but edge_normalization is False")
        self.partial_channels = partial_channels
        self.edge_normalization = bool(edge_normalization)
        self.primitive_names: list[str] = list(primitives)
        self.internal_nodes = internal_nodes
        self.is_reduction = bool(is_reduction)
        self.is_reduction_prev = bool(is_reduction_prev)
        self.num_edges = num_edges(internal_nodes)
        self.is_fixed = genotype is not None
        if affine is None:
            affine = self.is_fixed

        if cell_merge_output_fn is default_cell_output:
            cell_merge_output_fn = functools.partial(default_cell_output, nb_outputs_to_use=internal_nodes)
        self.cell_merge_output_fn = cell_merge_output_fn
        self.out_channels: int | None = None
        if (
            isinstance(cell_merge_output_fn, functools.partial)
            and cell_merge_output_fn.func is default_cell_output
        ):
            nb = cell_merge_output_fn.keywords.get("nb_outputs_to_use", 4)
            self.out_channels = c * min(nb, internal_nodes + 2)

        if not with_preprocessing:
            self.preprocess0: nn.Module = Identity()
            self.preprocess1: nn.Module = Identity()
        else:
            if is_reduction_prev:
                self.preprocess0 = ReduceChannels2d(cpp, c, affine=affine)
            else:
                self.preprocess0 = ReLUConvBN2d(cpp, c, 1, 1, 0, affine=affine)
            self.preprocess1 = ReLUConvBN2d(cp, c, 1, 1, 0, affine=affine)

        # (node, source state, stride) per edge, numbered node by node.
        self._edges: list[tuple[int, int, int]] = []
        for node in range(internal_nodes):
            for source in range(2 + node):
                self._edges.append((node, source, 2 if is_reduction and source < 2 else 1))

        if self.is_fixed:
            if weights is not None:
                raise ValueError(
                    "weights and genotype are exclusive: a cell built from a genotype has no weights"
                )
            assert genotype is not None  # is_fixed means a genotype was given
            genotype = list(genotype)
            if len(genotype) != self.num_edges:
                raise ValueError(
                    f"genotype must name one operation per edge: expected {self.num_edges} names for "
                    f"internal_nodes={internal_nodes}, got {len(genotype)}"
                )
            unknown = [name for name in genotype if name not in primitives]
            if unknown:
                raise ValueError(
                    f"genotype has unknown operations {unknown}; expected names among {self.primitive_names}"
                )
            self._genotype: list[str] | None = genotype
            self.edge_ops = nn.ModuleList(
                primitives[name](c, stride, affine)
                for name, (_, _, stride) in zip(genotype, self._edges, strict=True)
            )
            self.weights = None
            self.edge_weights = None
            edge_needs_relu = [_needs_relu(op) for op in self.edge_ops]
        else:
            self._genotype = None
            self.mixed_ops = nn.ModuleList(
                MixedOp(primitives, c // partial_channels, stride, affine) for _, _, stride in self._edges
            )
            self.weights = self._create_weights(primitives, weights)
            self.edge_weights = self._create_edge_weights(edge_weights) if edge_normalization else None
            edge_needs_relu = [cast(MixedOp, op).needs_relu for op in self.mixed_ops]
        # (edge, node) of the edges leaving each state, in node order.
        self._edges_from: list[list[tuple[int, int]]] = [[] for _ in range(internal_nodes + 2)]
        for edge, (node, source, _) in enumerate(self._edges):
            self._edges_from[source].append((edge, node))
        # Whether some edge reading state j needs relu(state j): computed once per forward and shared.
        self._state_needs_relu = [False] * (internal_nodes + 2)
        for (_, source, _), needs in zip(self._edges, edge_needs_relu, strict=True):
            self._state_needs_relu[source] |= needs

    @property
    def expected_weights_shape(self) -> tuple[int, int]:
        """``(num_edges, len(primitives))``."""
        return self.num_edges, len(self.primitive_names)

    def _create_weights(
        self, primitives: Mapping[str, PrimitiveFactory], weights: SpecialParameter | None
    ) -> SpecialParameter:
        """Create (or check) the architecture weights.

        They are a :class:`SpecialParameter` so optimizers can tell them from the operation weights.
        """
        expected = (self.num_edges, len(primitives))
        if weights is None:
            return SpecialParameter(1e-3 * torch.randn(*expected))
        if not isinstance(weights, SpecialParameter):
            raise ValueError(
                f"weights must be a SpecialParameter of shape {expected} (edges, primitives), "
                f"got {type(weights).__name__}"
            )
        if tuple(weights.shape) != expected:
            raise ValueError(
                f"weights must have shape {expected} (edges, primitives), got {tuple(weights.shape)}"
            )
        return weights

    def _create_edge_weights(self, edge_weights: SpecialParameter | None) -> SpecialParameter:
        """Create (or check) the PC-DARTS edge weights ``(num_edges,)``."""
        expected = (self.num_edges,)
        if edge_weights is None:
            return SpecialParameter(1e-3 * torch.randn(*expected))
        if not isinstance(edge_weights, SpecialParameter) or tuple(edge_weights.shape) != expected:
            raise ValueError(
                f"edge_weights must be a SpecialParameter of shape {expected} (edges,), got "
                f"{type(edge_weights).__name__} of shape {tuple(edge_weights.shape)}"
            )
        return edge_weights

    def get_weights(self) -> SpecialParameter | None:
        """The architecture weights ``(num_edges, len(primitives))`` (``None`` for a fixed cell).

        Useful to share them among cells (pass them as ``weights=`` to the other cells).
        """
        return self.weights

    def get_genotype(self) -> list[str]:
        """The strongest operation name of every edge (argmax of the weights), one per edge.

        For a cell built from a genotype, that genotype.
        """
        if self._genotype is not None:
            return list(self._genotype)
        assert self.weights is not None  # a search cell (no genotype) always has its weights
        best = self.weights.detach().argmax(dim=1).tolist()
        return [self.primitive_names[k] for k in best]

    def forward(
        self,
        parents: Sequence[torch.Tensor],
        weights: torch.Tensor | None = None,
        edge_weights: torch.Tensor | None = None,
        mixing: EdgeMixing | None = None,
    ) -> torch.Tensor:
        """Run the cell.

        Args:
            parents: ``[s0, s1]``, the outputs of the cell before the previous one and of the previous
                cell.
            weights: optional raw architecture weights ``(num_edges, len(primitives))`` used instead of
                the registered parameter (softmax is applied here). Any tensor works, e.g. the
                ``alpha - lr * grad`` of a functional second-order step. Not allowed for a fixed cell.
            edge_weights: optional raw edge weights (betas) ``(num_edges,)`` used instead of the
                registered ones (softmaxed per node here); only with ``edge_normalization``.
            mixing: the operation weights of a search method, used instead of ``softmax(weights)``
                (:class:`~darts_core.nn.edge_weights.EdgeMixing`); a sampled one (GDAS) without partial
                channels and edge normalization only.

        Returns:
            the merged states, ``(N, out_channels, H', W')`` for the default merge.
        """
        if len(parents) != 2:
            raise ValueError(f"parents must be a list of 2 tensors [s0, s1], got {len(parents)}")
        states = [self.preprocess0(parents[0]), self.preprocess1(parents[1])]
        relus: list[torch.Tensor | None] = [None] * len(self._state_needs_relu)

        def relu_of(j: int) -> torch.Tensor | None:
            if relus[j] is None and self._state_needs_relu[j]:
                relus[j] = F.relu(states[j])
            return relus[j]

        if self.is_fixed:
            if weights is not None:
                raise ValueError("a cell built from a genotype takes no weights")
            edge = 0
            for node in range(self.internal_nodes):
                total: torch.Tensor | None = None
                first_zero: tuple[nn.Module, int] | None = None
                for j in range(2 + node):
                    op = self.edge_ops[edge]
                    edge += 1
                    if isinstance(op, Zero2d):
                        first_zero = first_zero or (op, j)
                        continue
                    term = _run_op(op, states[j], relu_of(j))
                    total = term if total is None else total + term
                if total is None:
                    assert first_zero is not None  # every edge of the node was a Zero2d
                    op, j = first_zero
                    total = op(states[j])
                states.append(total)
            return self.cell_merge_output_fn(states)

        alphas = self.weights if weights is None else weights
        assert alphas is not None  # a search cell (no genotype) always has its weights
        if tuple(alphas.shape) != self.expected_weights_shape:
            raise ValueError(
                f"weights must have shape {self.expected_weights_shape} (edges, primitives), "
                f"got {tuple(alphas.shape)}"
            )
        if edge_weights is not None and not self.edge_normalization:
            raise ValueError("edge_weights given to a cell without edge_normalization")
        if mixing is not None and tuple(mixing.weights.shape) != self.expected_weights_shape:
            raise ValueError(
                f"mixing.weights must have shape {self.expected_weights_shape} (edges, primitives), "
                f"got {tuple(mixing.weights.shape)}"
            )
        if self.partial_channels > 1 or self.edge_normalization:
            if mixing is not None and mixing.sampled is not None:
                raise ValueError(
                    "sampled mixing is not supported with partial_channels or edge_normalization"
                )
            return self._forward_partial(states, alphas, edge_weights, mixing)
        rows = (F.softmax(alphas, dim=-1) if mixing is None else mixing.weights).unbind(0)
        sampled = None if mixing is None else mixing.sampled
        edge = 0
        for node in range(self.internal_nodes):
            total = None
            for j in range(2 + node):
                mixed_op = cast(MixedOp, self.mixed_ops[edge])
                row, index = rows[edge], None if sampled is None else sampled[edge]
                edge += 1
                if sampled is None:
                    term = mixed_op(states[j], row, relu_of(j))
                elif index is None:
                    continue  # a dropped edge: not computed, adds nothing
                else:
                    shared = relu_of(j) if _needs_relu(mixed_op.ops[index]) else None
                    term = mixed_op.forward_sampled(states[j], row, index, shared)
                total = term if total is None else total + term
            if total is None:
                raise ValueError(f"mixing.sampled drops every input edge of node {node}")
            states.append(_contiguous_gradient(total))
        return self.cell_merge_output_fn(states)

    def _forward_partial(
        self,
        states: list[torch.Tensor],
        alphas: torch.Tensor,
        edge_weights: torch.Tensor | None,
        mixing: EdgeMixing | None = None,
    ) -> torch.Tensor:
        """PC-DARTS: partial channels and/or edge normalization (the math of the reference's cell).

        Computed leaner than the reference, with the same value: the reference shuffles and weights
        every edge's output; here each node sums its edges' operation outputs (``c / K`` channels) and
        their bypassed channels separately, then concatenates and shuffles once (the shuffle is a fixed
        permutation, so it commutes with the sum). Each state is split once for all the edges reading
        it (one contiguous copy of its first ``c / K`` channels, their ReLU shared; the bypassed
        channels of a stride-2 edge max-pooled once, its max and average poolings computed once for all
        those edges, each keeping its own BatchNorm), and an edge's weight ``beta`` is folded into its
        operations' final BatchNorms with the alphas (autograd keeps no per-edge output for it). All the
        edges leaving one state run as one set of grouped operations as soon as the state exists
        (:func:`darts_core.nn.grouped_edges.run_edges_of_state`: about 1.8x faster at ``K = 4``).
        """
        k = self.partial_channels
        rows = F.softmax(alphas, dim=-1) if mixing is None else mixing.weights
        betas: list[torch.Tensor] | None = None
        if self.edge_normalization:
            raw = self.edge_weights if edge_weights is None else edge_weights
            assert raw is not None  # a cell with edge_normalization always has its edge weights
            if tuple(raw.shape) != (self.num_edges,):
                raise ValueError(f"edge_weights must have shape ({self.num_edges},), got {tuple(raw.shape)}")
            edge_softmaxed = edge_softmax(raw, self.internal_nodes)
            rows = rows * edge_softmaxed[:, None]
            betas = list(edge_softmaxed.unbind(0))

        count = len(self._state_needs_relu)
        partial: list[torch.Tensor | None] = [None] * count
        partial_relu: list[torch.Tensor | None] = [None] * count
        bypass: dict[tuple[int, int], torch.Tensor] = {}
        pooled: list[dict[tuple[type, Any], torch.Tensor]] = [{} for _ in range(count)]

        def partial_of(j: int) -> torch.Tensor:
            if partial[j] is None:
                state = states[j]
                if k == 1:
                    partial[j] = state
                else:
                    # One split per state (its backward is one concatenation of the two gradients).
                    head, tail = state.split([state.shape[1] // k, state.shape[1] - state.shape[1] // k], 1)
                    layout = torch.channels_last if _is_channels_last(state) else torch.contiguous_format
                    partial[j] = head.contiguous(memory_format=layout)
                    bypass[j, 1] = tail
            result = partial[j]
            assert result is not None  # filled just above
            return result

        def relu_of(j: int) -> torch.Tensor | None:
            if partial_relu[j] is None and self._state_needs_relu[j]:
                partial_relu[j] = F.relu(partial_of(j))
            return partial_relu[j]

        def bypass_of(j: int, stride: int) -> torch.Tensor:
            partial_of(j)
            if (j, stride) not in bypass:
                # The operations of a stride-2 edge halve H and W (rounding up): so does the pooling.
                bypass[j, stride] = F.max_pool2d(bypass[j, 1], 2, 2, ceil_mode=True)
            return bypass[j, stride]

        # All the edges leaving a state run together, grouped (darts_core.nn.grouped_edges), as soon as the
        # state exists; each node adds its edges in the order of their source states, as before.
        nodes = self.internal_nodes
        totals: list[torch.Tensor | None] = [None] * nodes
        passed: list[torch.Tensor | None] = [None] * nodes

        def run_edges_from(j: int) -> None:
            targets = self._edges_from[j]
            if not targets:
                return
            indices = [edge for edge, _ in targets]
            outputs = run_edges_of_state(
                [cast(MixedOp, self.mixed_ops[edge]) for edge in indices],
                partial_of(j),
                rows[indices] if len(indices) > 1 else rows[indices[0]][None],
                relu_of(j),
                pooled[j],
            )
            for (edge, node), output in zip(targets, outputs, strict=True):
                total = totals[node]
                totals[node] = output if total is None else total + output
                if k > 1:
                    rest = bypass_of(j, self._edges[edge][2])
                    if betas is not None:
                        rest = betas[edge] * rest
                    done = passed[node]
                    passed[node] = rest if done is None else done + rest

        run_edges_from(0)
        run_edges_from(1)
        for node in range(nodes):
            # Every node reads at least two states, so both sums (passed: when k > 1) were taken.
            total = totals[node]
            assert total is not None
            if k > 1:
                rest_sum = passed[node]
                assert rest_sum is not None
                pieces = [_contiguous_gradient(total), *rest_sum.chunk(k - 1, dim=1)]
                total = _interleave(pieces)
            states.append(_contiguous_gradient(total))
            run_edges_from(node + 2)
        return self.cell_merge_output_fn(states)

    def extra_repr(self) -> str:
        kind = "fixed" if self.is_fixed else "search"
        return (
            f"{kind}, internal_nodes={self.internal_nodes}, num_edges={self.num_edges}, "
            f"reduction={self.is_reduction}, reduction_prev={self.is_reduction_prev}"
            + (f", partial_channels={self.partial_channels}" if self.partial_channels > 1 else "")
            + (", edge_normalization=True" if self.edge_normalization else "")
        )
