"""The searchable supernet of DARTS.

``SearchNetwork`` stacks the seed's :class:`~darts_core.nn.cell.Cell` (every edge a mixed operation) and
owns the two architecture tensors ``alphas_normal`` and ``alphas_reduce``, each shared by all cells of
its kind (and, with PC-DARTS edge normalization, ``betas_normal`` and ``betas_reduce``). The DARTS
layout (:mod:`darts_core.nn.layout`): a 3x3 convolution + BN stem, then ``cells`` cells where the cells
at ``cells // 3`` and ``2 * cells // 3`` are reduction cells (stride 2, channels doubled), then global
average pooling and a linear classifier.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darts_core.nn.cell import Cell, default_cell_output
from darts_core.nn.edge_weights import EdgeMixing, edge_softmax
from darts_core.nn.layout import _check_positive, _is_reduction, _stem
from darts_core.nn.ops import DARTS_PRIMITIVES_2D
from darts_core.nn.special_parameter import SpecialParameter
from darts_core.search.derive import derive_genotype
from darts_core.spec.genotype import Genotype, num_edges
from darts_core.spec.search_spec import SearchConfig

__all__ = ["SearchNetwork"]

PrimitiveFactory = Callable[[int, int, bool], nn.Module]


def _resolve_primitives(
    primitives: Mapping[str, PrimitiveFactory] | Sequence[str],
) -> OrderedDict[str, PrimitiveFactory]:
    """Turns ``primitives`` (a mapping name -> factory, or names of DARTS operations) into a mapping."""
    if isinstance(primitives, Mapping):
        resolved = OrderedDict(primitives.items())
    elif isinstance(primitives, Sequence) and not isinstance(primitives, str | bytes):
        unknown = [name for name in primitives if name not in DARTS_PRIMITIVES_2D]
        if unknown:
            raise ValueError(
                f"primitives: unknown operation(s) {unknown}; known: {list(DARTS_PRIMITIVES_2D)}"
            )
        if len(set(primitives)) != len(primitives):
            raise ValueError(f"primitives: duplicate names in {list(primitives)}")
        resolved = OrderedDict((name, DARTS_PRIMITIVES_2D[name]) for name in primitives)
    else:
        raise ValueError(
            f"primitives must be a mapping name -> factory or a sequence of names, got {type(primitives)}"
        )
    if not resolved:
        raise ValueError("primitives must hold at least one operation")
    return resolved


def softmax_over_operations(alphas: Tensor) -> Tensor:
    """DARTS's operation weights: each edge's row softmaxed, ``(edges, ops) -> (edges, ops)``."""
    return F.softmax(alphas, dim=-1)


class SearchNetwork(nn.Module):
    """The DARTS supernet: stem, ``cells`` searchable cells, global average pooling and a linear head.

    Every cell is a :class:`~darts_core.nn.cell.Cell` over ``primitives``. All normal cells share one
    architecture tensor ``alphas_normal`` and all reduction cells share ``alphas_reduce``; both are
    :class:`~darts_core.nn.cell.SpecialParameter` of shape (edges, len(primitives)) where
    edges = sum(2 + i for i in range(internal_nodes)) (14 for 4 nodes), initialised to 1e-3 * randn.
    ``parameters()`` yields each alpha once.

    Channels follow the DARTS bookkeeping: the stem outputs ``stem_multiplier * init_channels``
    channels; the cell width starts at ``init_channels`` and doubles at each reduction cell; a cell
    outputs ``internal_nodes * width`` channels (the concatenation of its internal nodes).

    Args:
        in_channels: channels C of the input images.
        num_classes: number of classes of the logits.
        init_channels: width of the first cells.
        cells: number of cells (reduction cells at ``cells // 3`` and ``2 * cells // 3``).
        internal_nodes: internal nodes per cell.
        stem_multiplier: the stem outputs ``stem_multiplier * init_channels`` channels.
        primitives: a mapping name -> factory(C, stride, affine), or a sequence of names of
            :data:`~darts_core.nn.ops.DARTS_PRIMITIVES_2D`.
        partial_channels: ``K`` of PC-DARTS: each mixed operation sees ``1 / K`` of its input's
            channels, the rest bypass it, then a channel shuffle (see :class:`~darts_core.nn.cell.Cell`).
            ``init_channels`` must be divisible by ``K``. ``1`` (default): DARTS.
        edge_normalization: PC-DARTS edge normalization: two more architecture parameters,
            ``betas_normal`` and ``betas_reduce`` (one weight per edge, shared by the cells of a kind,
            softmaxed among each node's inputs), multiply every edge's output and weigh the edges when
            the genotype is derived.

    With ``partial_channels=1`` and ``edge_normalization=False`` the network, its initialisation (the
    random draws) and its outputs are those of DARTS, bit for bit.

    Shapes:
        input N x in_channels x H x W (any H, W >= 1; odd sizes are halved with ceil) -> logits
        N x num_classes.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        init_channels: int = 16,
        cells: int = 8,
        internal_nodes: int = 4,
        stem_multiplier: int = 3,
        primitives: Mapping[str, PrimitiveFactory] | Sequence[str] = DARTS_PRIMITIVES_2D,
        partial_channels: int = 1,
        edge_normalization: bool = False,
    ) -> None:
        super().__init__()
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("init_channels", init_channels),
            ("cells", cells),
            ("internal_nodes", internal_nodes),
            ("stem_multiplier", stem_multiplier),
        ):
            _check_positive(name, value)
        _check_positive("partial_channels", partial_channels)
        if init_channels % partial_channels:
            raise ValueError(
                f"partial_channels ({partial_channels}) must divide init_channels ({init_channels})"
            )
        self.partial_channels = partial_channels
        self.edge_normalization = bool(edge_normalization)
        self.primitives = _resolve_primitives(primitives)
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.init_channels = init_channels
        self.num_cells = cells
        self.internal_nodes = internal_nodes
        #: Maps one cell kind's raw alphas ``(edges, ops)`` to the operation weights that are reported
        #: (:meth:`softmaxed_alphas`) and derived from (:meth:`genotype`); a search method sets its own
        #: (:meth:`~darts_core.search.methods.base.SearchMethod.operation_weights`). Default: softmax.
        self.operation_weights: Callable[[Tensor], Tensor] = softmax_over_operations
        self.stem_multiplier = stem_multiplier

        alpha_shape = (num_edges(internal_nodes), len(self.primitives))
        self.alphas_normal = SpecialParameter(1e-3 * torch.randn(alpha_shape))
        self.alphas_reduce = SpecialParameter(1e-3 * torch.randn(alpha_shape))
        self.betas_normal: SpecialParameter | None = None
        self.betas_reduce: SpecialParameter | None = None
        if edge_normalization:
            self.betas_normal = SpecialParameter(1e-3 * torch.randn(alpha_shape[0]))
            self.betas_reduce = SpecialParameter(1e-3 * torch.randn(alpha_shape[0]))

        stem_channels = stem_multiplier * init_channels
        self.stem = _stem(in_channels, stem_channels)
        # A cell concatenates all of its internal nodes, as DARTS does (multiplier = steps).
        merge_output = functools.partial(default_cell_output, nb_outputs_to_use=internal_nodes)
        channels_prev_prev, channels_prev, width = stem_channels, stem_channels, init_channels
        reduction_prev = False
        self.cells = nn.ModuleList()
        self.reduction_cells = tuple(_is_reduction(index, cells) for index in range(cells))
        for reduction in self.reduction_cells:
            if reduction:
                width *= 2
            cell = Cell(
                self.primitives,
                channels_prev_prev,
                channels_prev,
                width,
                is_reduction=reduction,
                is_reduction_prev=reduction_prev,
                internal_nodes=internal_nodes,
                cell_merge_output_fn=merge_output,
                weights=self.alphas_reduce if reduction else self.alphas_normal,
                partial_channels=partial_channels,
                edge_normalization=edge_normalization,
                edge_weights=self.betas_reduce if reduction else self.betas_normal,
            )
            self.cells.append(cell)
            reduction_prev = reduction
            assert cell.out_channels is not None  # known for the default merge (merge_output)
            channels_prev_prev, channels_prev = channels_prev, cell.out_channels
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels_prev, num_classes)

    @classmethod
    def from_config(cls, config: SearchConfig, in_channels: int, num_classes: int) -> SearchNetwork:
        """The supernet a search spec describes (its ``network`` and ``search_space`` sections)."""
        return cls(
            in_channels,
            num_classes,
            init_channels=config.network.init_channels,
            cells=config.network.cells,
            internal_nodes=config.search_space.internal_nodes,
            stem_multiplier=config.network.stem_multiplier,
            primitives=list(config.search_space.primitives),
            partial_channels=config.search_space.partial_channels,
            edge_normalization=config.search_space.edge_normalization,
        )

    @property
    def primitive_names(self) -> list[str]:
        """Names of the operations, in the column order of the alphas."""
        return list(self.primitives)

    def forward(
        self, x: Tensor, alphas: Sequence[Tensor] | None = None, mixing: Sequence[EdgeMixing] | None = None
    ) -> Tensor:
        """Logits of the supernet.

        Args:
            x: images, N x in_channels x H x W.
            alphas: optional raw (not softmaxed) architecture parameters used instead of the network's,
                in the order of :meth:`arch_parameters`: ``(alphas_normal, alphas_reduce)``, each
                (edges, ops), followed with edge normalization by ``(betas_normal, betas_reduce)``, each
                (edges,). E.g. by a functional unrolled step.
            mixing: optional ``(normal, reduce)`` operation weights of a search method
                (:class:`~darts_core.nn.edge_weights.EdgeMixing`, e.g. GDAS's sampled one-hot), used by
                every cell of that kind instead of the softmaxed alphas (then ``alphas`` is not read).

        Returns:
            logits, N x num_classes.
        """
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be N x {self.in_channels} x H x W, got shape {tuple(x.shape)}")
        own = self.arch_parameters()
        if alphas is None:
            given = own
        else:
            given = list(alphas)
            if len(given) != len(own):
                names = "(alphas_normal, alphas_reduce" + (
                    ", betas_normal, betas_reduce)" if self.edge_normalization else ")"
                )
                raise ValueError(f"alphas must hold {len(own)} tensors {names}, got {len(given)}")
            for name, tensor, expected in zip(self._arch_names(), given, own, strict=True):
                if tensor.shape != expected.shape:
                    raise ValueError(
                        f"alphas: {name} must have shape {tuple(expected.shape)}, got {tuple(tensor.shape)}"
                    )
        alphas_normal, alphas_reduce = given[0], given[1]
        betas_normal, betas_reduce = (given[2], given[3]) if self.edge_normalization else (None, None)
        if mixing is not None and len(mixing) != 2:
            raise ValueError(f"mixing must hold 2 EdgeMixing (normal, reduce), got {len(mixing)}")
        s0 = s1 = self.stem(x)
        for cell, reduction in zip(self.cells, self.reduction_cells, strict=True):
            weights = alphas_reduce if reduction else alphas_normal
            kind_mixing = None if mixing is None else mixing[1 if reduction else 0]
            if self.edge_normalization:
                betas = betas_reduce if reduction else betas_normal
                s0, s1 = s1, cell([s0, s1], weights=weights, edge_weights=betas, mixing=kind_mixing)
            elif kind_mixing is not None:
                s0, s1 = s1, cell([s0, s1], weights=weights, mixing=kind_mixing)
            else:
                s0, s1 = s1, cell([s0, s1], weights=weights)
        pooled = self.global_pooling(s1).flatten(1)
        return self.classifier(pooled)

    def arch_parameters(self) -> list[Tensor]:
        """The architecture parameters ``[alphas_normal, alphas_reduce]``, each (edges, ops), then with
        edge normalization ``[betas_normal, betas_reduce]``, each (edges,)."""
        if self.betas_normal is not None and self.betas_reduce is not None:
            return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]
        return [self.alphas_normal, self.alphas_reduce]

    def _arch_names(self) -> list[str]:
        names = ["alphas_normal", "alphas_reduce"]
        return [*names, "betas_normal", "betas_reduce"] if self.edge_normalization else names

    def weight_parameters(self) -> list[Tensor]:
        """Every parameter that is not an architecture parameter (convolutions, BN, classifier)."""
        arch_ids = {id(p) for p in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch_ids]

    def softmaxed_alphas(self) -> dict[str, Tensor]:
        """Detached operation weights of the alphas (:attr:`operation_weights`: softmax over operations
        unless a search method says otherwise): ``{"normal": (edges, ops), "reduce": ...}``."""
        return {
            "normal": self.operation_weights(self.alphas_normal.detach()),
            "reduce": self.operation_weights(self.alphas_reduce.detach()),
        }

    def softmaxed_betas(self) -> dict[str, Tensor] | None:
        """Detached edge weights softmaxed per node, ``{"normal": (edges,), "reduce": (edges,)}``; ``None``
        without edge normalization."""
        if self.betas_normal is None or self.betas_reduce is None:
            return None
        return {
            "normal": edge_softmax(self.betas_normal.detach(), self.internal_nodes),
            "reduce": edge_softmax(self.betas_reduce.detach(), self.internal_nodes),
        }

    def genotype(self) -> Genotype:
        """The discrete architecture DARTS derives from the current alphas (two edges per node).

        With edge normalization the edges are ranked by alpha x beta, as the PC-DARTS reference does.
        """
        betas = {}
        if self.betas_normal is not None and self.betas_reduce is not None:
            betas = {
                "betas_normal": self.betas_normal.detach().cpu(),
                "betas_reduce": self.betas_reduce.detach().cpu(),
            }
        return derive_genotype(
            self.alphas_normal.detach().cpu(),
            self.alphas_reduce.detach().cpu(),
            self.primitive_names,
            self.internal_nodes,
            weights_of=self.operation_weights,
            **betas,
        )
