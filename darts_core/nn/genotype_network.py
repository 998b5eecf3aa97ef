"""The discrete network of DARTS, built from a genotype for retraining.

``GenotypeNetwork`` keeps only the two chosen edges per node, as the DARTS evaluation network does, and
adds drop-path and an optional auxiliary head. Same layout as the supernet (:mod:`darts_core.nn.layout`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from darts_core.nn.layout import _check_positive, _is_reduction, _stem
from darts_core.nn.ops import DARTS_PRIMITIVES_2D, Identity, ReduceChannels2d, ReLUConvBN2d
from darts_core.spec.genotype import Genotype

__all__ = ["AuxiliaryHead", "GenotypeCell", "GenotypeNetwork", "drop_path"]

PrimitiveFactory = Callable[[int, int, bool], nn.Module]


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
