"""The two networks of DARTS: the searchable supernet and the discrete network built from a genotype.

``SearchNetwork`` stacks the seed's :class:`~darts_core.nn.cell.Cell` (every edge a mixed operation) and
owns the two architecture tensors ``alphas_normal`` and ``alphas_reduce``, each shared by all cells of
its kind. ``GenotypeNetwork`` keeps only the two chosen edges per node, as the DARTS evaluation network
does, and adds drop-path and an optional auxiliary head for retraining.

Both follow the DARTS layout: a 3x3 convolution + BN stem, then ``cells`` cells where the cells at
``cells // 3`` and ``2 * cells // 3`` are reduction cells (stride 2, channels doubled), then global
average pooling and a linear classifier.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darts_core.nn.cell import Cell, SpecialParameter, default_cell_output
from darts_core.nn.edge_weights import edge_softmax
from darts_core.nn.ops import DARTS_PRIMITIVES_2D, Identity, ReduceChannels2d, ReLUConvBN2d
from darts_core.search.derive import derive_genotype
from darts_core.spec.genotype import Genotype, num_edges

__all__ = ["SearchNetwork", "GenotypeNetwork", "AuxiliaryHead", "GenotypeCell", "drop_path"]

PrimitiveFactory = Callable[[int, int, bool], nn.Module]


def _is_reduction(index: int, cells: int) -> bool:
    """DARTS places its two reduction cells at one third and two thirds of the depth."""
    return index in (cells // 3, 2 * cells // 3)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


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


def _stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias) and BN: N x in_channels x H x W -> N x out_channels x H x W."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )


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

    @property
    def primitive_names(self) -> list[str]:
        """Names of the operations, in the column order of the alphas."""
        return list(self.primitives)

    def forward(self, x: Tensor, alphas: Sequence[Tensor] | None = None) -> Tensor:
        """Logits of the supernet.

        Args:
            x: images, N x in_channels x H x W.
            alphas: optional raw (not softmaxed) architecture parameters used instead of the network's,
                in the order of :meth:`arch_parameters`: ``(alphas_normal, alphas_reduce)``, each
                (edges, ops), followed with edge normalization by ``(betas_normal, betas_reduce)``, each
                (edges,). E.g. by a functional unrolled step.

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
        s0 = s1 = self.stem(x)
        for cell, reduction in zip(self.cells, self.reduction_cells, strict=True):
            weights = alphas_reduce if reduction else alphas_normal
            if self.edge_normalization:
                betas = betas_reduce if reduction else betas_normal
                s0, s1 = s1, cell([s0, s1], weights=weights, edge_weights=betas)
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
        """Detached softmax of the alphas over operations: ``{"normal": (edges, ops), "reduce": ...}``."""
        return {
            "normal": F.softmax(self.alphas_normal.detach(), dim=-1),
            "reduce": F.softmax(self.alphas_reduce.detach(), dim=-1),
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
            **betas,
        )


def drop_path(x: Tensor, drop_prob: float) -> Tensor:
    """Zeroes whole samples with probability ``drop_prob`` and scales the kept ones by 1 / (1 - p).

    Shapes: x N x ... -> same shape. The expectation over the mask equals ``x``.
    """
    if drop_prob <= 0.0:
        return x
    keep_prob = 1.0 - drop_prob
    mask_shape = (x.shape[0],) + (1,) * (x.dim() - 1)
    mask = torch.empty(mask_shape, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask / keep_prob


def _discrete_op(name: str, channels: int, stride: int) -> nn.Module:
    """One chosen operation of a discrete cell: N x C x H x W -> N x C x ceil(H / stride) x ceil(W / stride).

    The searchable pools carry a non-affine BN (it balances their scale against the learned operations
    inside a mixed edge); the DARTS evaluation network uses the bare pools, and so does this one.
    Every other operation is the :data:`~darts_core.nn.ops.DARTS_PRIMITIVES_2D` one with affine BN.
    """
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride=stride, padding=1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
    return DARTS_PRIMITIVES_2D[name](channels, stride, True)


class GenotypeCell(nn.Module):
    """A discrete DARTS cell: each internal node sums two chosen operations of two earlier states.

    Args:
        ops: the chosen ``(op_name, input_index)`` pairs, two per node (``genotype.normal`` or
            ``genotype.reduce``); input 0 and 1 are the cell's inputs, 2 + k the k-th node.
        concat: indices of the states concatenated into the output.
        channels_prev_prev, channels_prev: channels of the two inputs.
        channels: width of the cell's nodes.
        is_reduction: the operations reading the cell inputs use stride 2.
        is_reduction_prev: the previous cell reduced, so input 0 is halved by ReduceChannels2d.

    Shapes:
        ``forward(s0, s1)`` with s0 N x channels_prev_prev x H0 x W0 and s1 N x channels_prev x H x W
        (H0 = 2H or 2H - 1 after a reduction, else H) -> N x len(concat) * channels x H' x W'
        (H' = ceil(H / 2) for a reduction cell, else H).
    """

    def __init__(
        self,
        ops: Sequence[tuple[str, int]],
        concat: Sequence[int],
        channels_prev_prev: int,
        channels_prev: int,
        channels: int,
        is_reduction: bool,
        is_reduction_prev: bool,
    ) -> None:
        super().__init__()
        self.is_reduction = is_reduction
        if is_reduction_prev:
            self.preprocess0: nn.Module = ReduceChannels2d(channels_prev_prev, channels, affine=True)
        else:
            self.preprocess0 = ReLUConvBN2d(channels_prev_prev, channels, 1, 1, 0, affine=True)
        self.preprocess1 = ReLUConvBN2d(channels_prev, channels, 1, 1, 0, affine=True)
        self.indices = [int(index) for _, index in ops]
        self.concat = [int(index) for index in concat]
        self.num_nodes = len(ops) // 2
        self.ops = nn.ModuleList()
        for name, index in ops:
            stride = 2 if is_reduction and index < 2 else 1
            self.ops.append(_discrete_op(name, channels, stride))
        self.out_channels = len(self.concat) * channels

    def forward(self, s0: Tensor, s1: Tensor, drop_prob: float = 0.0) -> Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for node in range(self.num_nodes):
            node_sum = None
            for slot in (2 * node, 2 * node + 1):
                op = self.ops[slot]
                h = op(states[self.indices[slot]])
                # Drop-path regularises the learned operations only; an identity edge is kept intact.
                if self.training and drop_prob > 0.0 and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                node_sum = h if node_sum is None else node_sum + h
            states.append(node_sum)
        return torch.cat([states[index] for index in self.concat], dim=1)


class AuxiliaryHead(nn.Module):
    """The auxiliary classifier of the DARTS evaluation network (AuxiliaryHeadCIFAR), for any size.

    ReLU, 5x5 average pooling with stride 3 when the map is at least 5x5 (8x8 -> 2x2 on CIFAR-10, as
    in DARTS), then an adaptive average pooling to 2x2 so smaller maps work too, a 1x1 convolution to
    128 channels + BN + ReLU, a 2x2 convolution to 768 channels + BN + ReLU, and a linear layer.

    Shapes: N x in_channels x H x W -> N x num_classes.
    """

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 128, kernel_size=1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, kernel_size=2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(x)
        if min(x.shape[-2:]) >= 5:
            x = F.avg_pool2d(x, kernel_size=5, stride=3, padding=0, count_include_pad=False)
        x = F.adaptive_avg_pool2d(x, 2)
        return self.classifier(self.features(x).flatten(1))


class GenotypeNetwork(nn.Module):
    """The discrete DARTS network built from a genotype, for retraining from scratch.

    Stem (3x3 convolution + BN to 3 * init_channels), ``cells`` :class:`GenotypeCell` (reductions at
    ``cells // 3`` and ``2 * cells // 3``, each doubling the width), global average pooling, a linear
    head. Operations are those of :data:`~darts_core.nn.ops.DARTS_PRIMITIVES_2D` with affine BN (pools
    without BN, as in the DARTS evaluation network).
    During training each non-identity edge is dropped per sample with probability ``drop_path_prob``
    (a plain attribute, so a trainer can ramp it). With ``auxiliary=True`` an :class:`AuxiliaryHead`
    reads the output of the cell at ``2 * cells // 3``.

    Args:
        genotype: the architecture; any number of nodes (two operations per node).
        in_channels: channels C of the input images.
        num_classes: number of classes.
        init_channels: width of the first cells (36 in the DARTS CIFAR-10 evaluation).
        cells: number of cells (20 in the DARTS CIFAR-10 evaluation).
        auxiliary: adds the auxiliary head.
        drop_path_prob: probability of dropping a path during training.

    Shapes:
        input N x in_channels x H x W -> logits N x num_classes; in training mode with
        ``auxiliary=True`` the pair (logits, aux_logits), both N x num_classes.

    Raises:
        ValueError: an invalid genotype (the message says which entry) or a bad argument.
    """

    def __init__(
        self,
        genotype: Genotype,
        in_channels: int,
        num_classes: int,
        init_channels: int = 36,
        cells: int = 20,
        auxiliary: bool = False,
        drop_path_prob: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(genotype, Genotype):
            raise ValueError(f"genotype must be a Genotype, got {type(genotype).__name__}")
        genotype.validate(list(DARTS_PRIMITIVES_2D))
        for name, value in (
            ("in_channels", in_channels),
            ("num_classes", num_classes),
            ("init_channels", init_channels),
            ("cells", cells),
        ):
            _check_positive(name, value)
        if not 0.0 <= float(drop_path_prob) < 1.0:
            raise ValueError(f"drop_path_prob must be in [0, 1), got {drop_path_prob!r}")
        self.genotype = genotype
        # The constructor arguments, kept so the network can be rebuilt (darts_core.train.weights).
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.init_channels = init_channels
        self.num_cells = cells
        self.auxiliary = auxiliary
        self.drop_path_prob = float(drop_path_prob)
        self.auxiliary_index = 2 * cells // 3

        stem_channels = 3 * init_channels
        self.stem = _stem(in_channels, stem_channels)
        channels_prev_prev, channels_prev, width = stem_channels, stem_channels, init_channels
        reduction_prev = False
        auxiliary_channels = None
        self.cells = nn.ModuleList()
        for index in range(cells):
            reduction = _is_reduction(index, cells)
            if reduction:
                width *= 2
            ops, concat = (
                (genotype.reduce, genotype.reduce_concat)
                if reduction
                else (genotype.normal, genotype.normal_concat)
            )
            assert concat is not None  # Genotype.__post_init__ fills both concats
            cell = GenotypeCell(
                ops, concat, channels_prev_prev, channels_prev, width, reduction, reduction_prev
            )
            self.cells.append(cell)
            reduction_prev = reduction
            channels_prev_prev, channels_prev = channels_prev, cell.out_channels
            if index == self.auxiliary_index:
                auxiliary_channels = channels_prev
        # auxiliary_index < cells, so auxiliary_channels was set in the loop.
        self.auxiliary_head = AuxiliaryHead(cast(int, auxiliary_channels), num_classes) if auxiliary else None
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels_prev, num_classes)

    def forward(self, x: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        """Logits N x num_classes, or (logits, aux_logits) in training mode with the auxiliary head."""
        aux_logits = None
        s0 = s1 = self.stem(x)
        for index, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if index == self.auxiliary_index and self.auxiliary_head is not None and self.training:
                aux_logits = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        if aux_logits is not None:
            return logits, aux_logits
        return logits
