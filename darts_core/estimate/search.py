"""The search's estimate: the supernet's exact weight count and the modelled peak memory of one step."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import cast

import torch
from torch import nn

from darts_core.nn.layout import _is_reduction, _stem
from darts_core.nn.mixed_op import MixedOp, _as_primitives
from darts_core.nn.ops import ReduceChannels2d, ReLUConvBN2d
from darts_core.spec.genotype import DARTS_OP_NAMES, num_edges
from darts_core.spec.search_spec import SearchConfig

__all__ = ["EDGE_VALUES", "SearchEstimate", "count_weights", "estimate_search"]

_FLOAT_BYTES = 4
#: What the Hessian-eigenvalue pass (``training.hessian_every``, :mod:`darts_core.search.collapse`) allocates
#: at its peak, in units of the step's saved activations (``saved_bytes``): its forward keeps what the
#: recomputing Functions would not (they are off there), its gradient's graph is kept for the
#: double-backward passes, and each pass adds its own gradients. Measured with
#: :class:`~darts_core.estimate.meter.AllocationMeter` on CPU: 1.73x (3 cells, 4 channels, 2 nodes, batch
#: 4, 8x8), 2.35x (3 cells, 4 channels, 4 nodes, batch 4, 8x8), 2.75x (5 cells, 8 channels, batch 8, 16x16);
#: rounded up (benchmarks/README.md).
HESSIAN_SAVED_FACTOR = 3.0

#: Activation values one primitive of a mixed edge saves for backward, per element of the edge's output
#: (``N x C x H' x W'``), by stride (measured with :class:`SavedTensorMeter`; the few per-channel
#: BatchNorm statistics are left out). The input state and its ``relu`` are not counted here: several
#: primitives share them (see :data:`_READS_RELU` and :data:`_READS_STATE`).
EDGE_VALUES: dict[str, tuple[float, float]] = {
    "none": (0.0, 0.0),  # never computed when another primitive is present
    "max_pool_3x3": (1.0, 1.0),
    "avg_pool_3x3": (1.0, 1.0),
    "skip_connect": (0.0, 5.0),  # identity (stride 1) or factorized reduction (stride 2)
    "sep_conv_3x3": (3.0, 3.0),
    "sep_conv_5x5": (3.0, 3.0),
    "dil_conv_3x3": (1.0, 1.0),
    "dil_conv_5x5": (1.0, 1.0),
}
# Primitives whose saved tensors include relu(state) (stride 1, stride 2), or the state itself.
_READS_RELU = {
    "skip_connect": (False, True),
    **{name: (True, True) for name in ("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5")},
}
#: The operations run as grouped convolutions over a state's repeated ReLU in PC-DARTS mode.
_GROUPED_CONVOLUTIONS = frozenset(("sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"))
_READS_STATE = {
    "max_pool_3x3": (True, True),
    "avg_pool_3x3": (True, True),
    "skip_connect": (True, False),  # scale * state keeps the state for the gradient of the scale
}


@dataclass(frozen=True)
class SearchEstimate:
    """What a search needs. Byte figures are for one worker running fp32 on CPU; under bf16 autocast
    (``resources.precision``, the default on CUDA) the recomputing autograd Functions are off and the
    convolutions keep bf16 outputs, which measured 0.94x the fp32 figure's saved activations on CPU
    (``tests/core/test_estimate.py`` holds both paths to the same 25 %), so the same figures stand.

    Attributes:
        weights: trainable weights of the supernet (architecture parameters excluded).
        arch_weights: architecture parameters (the two alpha tensors).
        state_bytes: parameters + gradients + optimizer states.
        saved_bytes: activations saved for backward, at the largest pass of one bilevel step.
        workspace_bytes: batches, activation gradients of one cell, second-order weight copies.
        dataset_bytes: the training images held by the worker (its copy and the device split), 0 when
            unknown.
        hessian_bytes: what the Hessian-eigenvalue pass allocates on top of the state (0 without
            ``training.hessian_every``); it runs between epochs, not during a step.
    """

    weights: int
    arch_weights: int
    state_bytes: int
    saved_bytes: int
    workspace_bytes: int
    dataset_bytes: int = 0
    hessian_bytes: int = 0

    @property
    def step_bytes(self) -> int:
        """Peak memory of one bilevel step: state + saved activations + workspace."""
        return self.state_bytes + self.saved_bytes + self.workspace_bytes

    @property
    def peak_bytes(self) -> int:
        """What the worker needs at its peak: one step or the Hessian pass, whichever is larger, and the
        dataset."""
        return max(self.step_bytes, self.state_bytes + self.hessian_bytes) + self.dataset_bytes

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "step_bytes": self.step_bytes, "peak_bytes": self.peak_bytes}


@dataclass(frozen=True)
class _CellShape:
    """One cell of the supernet as :class:`~darts_core.nn.search_network.SearchNetwork` lays it out."""

    in_channels: tuple[int, int]  # channels of s0 and s1
    in_sizes: tuple[tuple[int, int], tuple[int, int]]  # (H, W) of s0 and s1
    width: int
    reduction: bool
    reduction_prev: bool


def _halved(size: int) -> int:
    return -(-size // 2)


def _cell_shapes(
    image_size: tuple[int, int], init_channels: int, cells: int, internal_nodes: int, stem_multiplier: int
) -> list[_CellShape]:
    """The cells of a supernet, with the channel and size bookkeeping of SearchNetwork."""
    stem_channels = stem_multiplier * init_channels
    sizes = (image_size, image_size)
    channels = (stem_channels, stem_channels)
    width, reduction_prev, shapes = init_channels, False, []
    for index in range(cells):
        reduction = _is_reduction(index, cells)
        if reduction:
            width *= 2
        shapes.append(_CellShape(channels, sizes, width, reduction, reduction_prev))
        out_size = (_halved(sizes[1][0]), _halved(sizes[1][1])) if reduction else sizes[1]
        sizes = (sizes[1], out_size)
        channels = (channels[1], internal_nodes * width)
        reduction_prev = reduction
    return shapes


@functools.lru_cache(maxsize=256)
def _module_weights(kind: str, *args: object) -> int:
    """Weights of one part of a cell, built on the meta device (each distinct part once)."""
    # args: untyped to keep one cache for every kind; each kind's callers pass the tuple cast below.
    with torch.device("meta"):
        if kind == "mixed":
            primitives, channels, stride = cast("tuple[Sequence[str], int, int]", args)
            module: nn.Module = MixedOp(_as_primitives(primitives), channels, stride)
        elif kind == "reduce":
            module = ReduceChannels2d(*cast("tuple[int, int]", args), affine=False)
        else:
            module = ReLUConvBN2d(*cast("tuple[int, int]", args), 1, 1, 0, affine=False)
    return sum(p.numel() for p in module.parameters())


def _cell_weights(
    shape: _CellShape, internal_nodes: int, primitives: tuple[str, ...], partial_channels: int = 1
) -> int:
    """Weights of one search cell (:class:`~darts_core.nn.cell.Cell`): its two preprocessing operations and
    its mixed edges, which differ only by stride (2 from the inputs of a reduction cell) and see
    ``width / partial_channels`` channels."""
    c_pp, c_p = shape.in_channels
    width = shape.width
    weights = _module_weights("reduce" if shape.reduction_prev else "relu_conv_bn", c_pp, width)
    weights += _module_weights("relu_conv_bn", c_p, width)
    from_inputs = 2 * internal_nodes
    input_stride = 2 if shape.reduction else 1
    part = width // partial_channels
    weights += from_inputs * _module_weights("mixed", primitives, part, input_stride)
    weights += (num_edges(internal_nodes) - from_inputs) * _module_weights("mixed", primitives, part, 1)
    return weights


@functools.lru_cache(maxsize=256)
def count_weights(
    in_channels: int,
    num_classes: int,
    *,
    init_channels: int = 16,
    cells: int = 8,
    internal_nodes: int = 4,
    stem_multiplier: int = 3,
    primitives: tuple[str, ...] = DARTS_OP_NAMES,
    partial_channels: int = 1,
    edge_normalization: bool = False,
) -> tuple[int, int]:
    """``(weights, arch_weights)`` of :class:`~darts_core.nn.search_network.SearchNetwork`, exactly.

    Its parts are built on the ``meta`` device (no memory is allocated), each distinct cell shape once:
    a 64-cell supernet has only a handful of them. With PC-DARTS' ``partial_channels`` ``K`` the mixed
    edges have ``1 / K`` of the channels; ``edge_normalization`` adds one beta per edge and cell kind.
    """
    primitives = tuple(primitives)
    shapes = _cell_shapes((1, 1), init_channels, cells, internal_nodes, stem_multiplier)
    stem_channels = stem_multiplier * init_channels
    with torch.device("meta"):
        stem = _stem(in_channels, stem_channels)
        classifier = nn.Linear(internal_nodes * shapes[-1].width, num_classes)
    weights = sum(p.numel() for module in (stem, classifier) for p in module.parameters())
    weights += sum(_cell_weights(shape, internal_nodes, primitives, partial_channels) for shape in shapes)
    betas = 2 * num_edges(internal_nodes) if edge_normalization else 0
    return weights, 2 * num_edges(internal_nodes) * len(primitives) + betas


def _cell_values(
    primitives: Sequence[str],
    internal_nodes: int,
    shape: _CellShape,
    partial_channels: int = 1,
    edge_normalization: bool = False,
    sampled: bool = False,
    drawn: bool = False,
) -> tuple[float, int]:
    """Saved activation values per sample of one search cell, and the values of its states per sample.

    ``sampled`` (GDAS): every edge runs one sampled operation, counted as the one that keeps the most.
    ``drawn`` (random_ws): only two input edges of each node run, one operation each: each node counts
    its two most memory-hungry inputs at their most memory-hungry operation.

    PC-DARTS (``partial_channels`` ``K > 1``): the operations and the state's shared head and ReLU have
    ``width / K`` channels; the bypassed channels of a stride-2 edge are max-pooled (the pooling keeps
    the state and int64 indices); with edge normalization, ``beta x bypass`` keeps the bypassed channels
    (the state itself at stride 1, the pooled ones at stride 2). In PC-DARTS mode (``K > 1`` or edge
    normalization) the edges leaving a state run grouped (:mod:`darts_core.nn.grouped_edges`): the grouped
    convolutions keep the state's ReLU repeated once per edge.
    """
    computed = [name for name in primitives if name != "none"]
    (h0, w0), (h1, w1) = shape.in_sizes
    c_pp, c_p = shape.in_channels
    width = shape.width
    state_area = h1 * w1  # both preprocessed inputs have the previous cell's resolution
    out_area = _halved(h1) * _halved(w1) if shape.reduction else state_area
    # Preprocessing: ReLU -> 1x1 conv -> BN keeps relu(input) and the BN input; the factorized
    # reduction of a state after a reduction cell also keeps a strided copy of its input.
    values = float(c_p * state_area + width * state_area)
    values += (2 if shape.reduction_prev else 1) * c_pp * h0 * w0 + width * state_area

    part = width // partial_channels
    bypassed = width - part
    edge_values = []  # per source state: one edge leaving it at its most memory-hungry operation
    for source in range(1 + internal_nodes):  # every state but the last node feeds edges
        area = state_area if source < 2 else out_area
        index = 1 if shape.reduction and source < 2 else 0  # stride 2 or 1
        outgoing = internal_nodes - max(0, source - 1)  # edges from this state to later nodes
        kept = [EDGE_VALUES[name][index] for name in computed]
        edge_values.append(max(kept, default=0.0) * part * out_area)
        if not drawn:
            values += outgoing * (max(kept, default=0.0) if sampled else sum(kept)) * part * out_area
        if any(_READS_RELU.get(name, (False, False))[index] for name in computed):
            values += part * area
        if (
            (partial_channels > 1 or edge_normalization)
            and outgoing > 1
            and any(name in _GROUPED_CONVOLUTIONS for name in computed)
        ):
            values += outgoing * part * area
        if any(_READS_STATE.get(name, (False, False))[index] for name in computed):
            values += part * area
        if bypassed and index == 1:  # the 2x2 max pooling of the bypass: the state and int64 indices
            values += width * area + 2 * bypassed * out_area
            values += bypassed * out_area if edge_normalization else 0
        elif bypassed and edge_normalization:
            values += width * area
    if drawn:
        values += sum(sum(sorted(edge_values[: node + 2])[-2:]) for node in range(internal_nodes))
    state_values = 2 * width * state_area + internal_nodes * width * out_area
    return values, state_values


def _saved_values_per_sample(
    in_channels: int,
    image_size: tuple[int, int],
    init_channels: int,
    cells: int,
    internal_nodes: int,
    stem_multiplier: int,
    primitives: Sequence[str],
    partial_channels: int = 1,
    edge_normalization: bool = False,
    sampled: bool = False,
    drawn: bool = False,
) -> tuple[float, int]:
    """Saved values per sample of a forward with weight gradients, and the largest cell's state values."""
    height, width = image_size
    # The stem keeps the images (conv input) and its BN input.
    values = float((in_channels + stem_multiplier * init_channels) * height * width)
    largest_states = 0
    shapes = _cell_shapes(image_size, init_channels, cells, internal_nodes, stem_multiplier)
    for shape in shapes:
        cell, states = _cell_values(
            primitives, internal_nodes, shape, partial_channels, edge_normalization, sampled, drawn
        )
        values += cell
        largest_states = max(largest_states, states)
    last = shapes[-1]
    out_h, out_w = last.in_sizes[1]
    if last.reduction:
        out_h, out_w = _halved(out_h), _halved(out_w)
    # Global pooling keeps the last cell's output; the classifier its pooled input.
    out_channels = internal_nodes * last.width
    values += out_channels * out_h * out_w + out_channels
    return values, largest_states


def estimate_search(
    config: SearchConfig,
    *,
    in_channels: int,
    image_size: tuple[int, int],
    num_classes: int,
    num_samples: int | None = None,
) -> SearchEstimate:
    """Estimate what the search of ``config`` (a :class:`~darts_core.spec.search_spec.SearchConfig`) needs
    on data of ``in_channels x image_size`` images in ``num_classes`` classes (``num_samples`` of them when
    known, for ``dataset_bytes``). Cheap: nothing is allocated but a few cells on the ``meta`` device."""
    space, network, training = config.search_space, config.network, config.training
    primitives = tuple(space.primitives)
    weights, arch = count_weights(
        in_channels,
        num_classes,
        init_channels=network.init_channels,
        cells=network.cells,
        internal_nodes=space.internal_nodes,
        stem_multiplier=network.stem_multiplier,
        primitives=primitives,
        partial_channels=space.partial_channels,
        edge_normalization=space.edge_normalization,
    )
    per_sample, largest_states = _saved_values_per_sample(
        in_channels,
        cast("tuple[int, int]", tuple(image_size)),  # tuple(): hashable even if a list was passed
        network.init_channels,
        network.cells,
        space.internal_nodes,
        network.stem_multiplier,
        primitives,
        space.partial_channels,
        space.edge_normalization,
        config.method.name == "gdas",  # one sampled operation per edge
        config.method.name == "random_ws",  # two drawn input edges per node, one operation each
    )
    batch = training.batch_size
    state = _FLOAT_BYTES * (3 * weights + 4 * arch)
    saved = math.ceil(_FLOAT_BYTES * batch * per_sample)
    image_values = in_channels * image_size[0] * image_size[1]
    workspace = _FLOAT_BYTES * batch * (2 * image_values + largest_states)
    if training.order == "second":
        workspace += _FLOAT_BYTES * 2 * weights  # w' and v of the unrolled step
    dataset = 2 * _FLOAT_BYTES * num_samples * image_values if num_samples else 0
    hessian = 0
    if training.hessian_every is not None:  # on a batch of `batch_size` validation images
        hessian = math.ceil(HESSIAN_SAVED_FACTOR * saved) + _FLOAT_BYTES * batch * image_values
    return SearchEstimate(weights, arch, state, saved, workspace, dataset, hessian)


# --------------------------------------------------------------------------------------- measurement
