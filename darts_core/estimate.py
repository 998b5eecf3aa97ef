"""What a search needs before it runs: the supernet's exact weight count and the peak memory of one step.

* :func:`count_weights` builds the supernet on torch's ``meta`` device (shapes only: no memory, no
  arithmetic) and counts its parameters exactly.
* :func:`estimate_search` adds the peak memory of one bilevel step
  (:class:`~darts_core.search.bilevel.DartsSearch`, fp32 on CPU) from a formula over the network's shapes
  and the batch size:

  - **state**: parameters, their gradients and the optimizer states (SGD momentum for the weights, Adam's
    two moments for the alphas): ``4 bytes x (3 x weights + 4 x alphas)``;
  - **saved**: the activations autograd keeps for backward during the largest pass of the step (a pass
    with weight gradients: the weight step, and for the second order also the passes at ``w`` and
    ``w'``), summed cell by cell: per mixed edge, :data:`EDGE_VALUES` values per output element of each
    primitive, plus once per state the ``relu`` (or the state itself) that several primitives read and
    share, plus the two preprocessing operations and the stem;
  - **workspace**: what is alive next to it: the two batches, the gradients of one cell's states during
    backward, and for the second order the two weight-sized tensors ``w'`` and ``v`` of the unrolled step.

  The per-primitive coefficients come from measuring each operation with
  :func:`torch.autograd.graph.saved_tensors_hooks` (:class:`SavedTensorMeter`); :func:`measure_step`
  measures a real step the same way, and the tests check the estimate against it on several sizes.
  On CUDA the worker runs under bf16 autocast, so the fp32 figure is an upper bound there.
* :func:`estimate_training` gives the same figures for a retraining
  (:func:`~darts_core.train.job.run_training_job`): its network is discrete and small next to a
  supernet, so its saved activations are *measured* rather than modelled: one training-mode forward
  pass (and the loss) runs on the ``meta`` device, where only shapes exist, under
  :class:`SavedTensorMeter`. :func:`measure_training_step` measures a real step for the tests.

PC-DARTS (``search_space.partial_channels`` ``K``, ``edge_normalization``): the mixed edges have
``width / K`` channels (weights and saved values shrink about ``K`` times), the bypassed channels add
their max pooling on stride-2 edges and, with edge normalization, ``beta x bypass``; one beta per edge
joins the architecture parameters.
"""

from __future__ import annotations

import contextlib
import functools
import math
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from darts_core.nn.mixed_op import MixedOp, _as_primitives
from darts_core.nn.networks import GenotypeCell, GenotypeNetwork, SearchNetwork, _is_reduction, _stem
from darts_core.nn.ops import ReduceChannels2d, ReLUConvBN2d
from darts_core.search.bilevel import DartsSearch
from darts_core.spec.genotype import DARTS_OP_NAMES, Genotype, num_edges
from darts_core.spec.search_spec import SearchConfig
from darts_core.spec.training_spec import TrainingJobConfig

__all__ = [
    "EDGE_VALUES",
    "SearchEstimate",
    "SavedTensorMeter",
    "count_weights",
    "estimate_search",
    "measure_step",
    "estimate_training",
    "measure_training_step",
]

_FLOAT_BYTES = 4

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
    """What a search needs. Byte figures are for one worker running fp32 on CPU.

    Attributes:
        weights: trainable weights of the supernet (architecture parameters excluded).
        arch_weights: architecture parameters (the two alpha tensors).
        state_bytes: parameters + gradients + optimizer states.
        saved_bytes: activations saved for backward, at the largest pass of one bilevel step.
        workspace_bytes: batches, activation gradients of one cell, second-order weight copies.
        dataset_bytes: the training images held by the worker (its copy and the device split), 0 when
            unknown.
    """

    weights: int
    arch_weights: int
    state_bytes: int
    saved_bytes: int
    workspace_bytes: int
    dataset_bytes: int = 0

    @property
    def step_bytes(self) -> int:
        """Peak memory of one bilevel step: state + saved activations + workspace."""
        return self.state_bytes + self.saved_bytes + self.workspace_bytes

    @property
    def peak_bytes(self) -> int:
        """What the worker needs at its peak: one step and the dataset."""
        return self.step_bytes + self.dataset_bytes

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "step_bytes": self.step_bytes, "peak_bytes": self.peak_bytes}


@dataclass(frozen=True)
class _CellShape:
    """One cell of the supernet as :class:`~darts_core.nn.networks.SearchNetwork` lays it out."""

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
    """``(weights, arch_weights)`` of :class:`~darts_core.nn.networks.SearchNetwork`, exactly.

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
) -> tuple[float, int]:
    """Saved activation values per sample of one search cell, and the values of its states per sample.

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
    for source in range(1 + internal_nodes):  # every state but the last node feeds edges
        area = state_area if source < 2 else out_area
        index = 1 if shape.reduction and source < 2 else 0  # stride 2 or 1
        outgoing = internal_nodes - max(0, source - 1)  # edges from this state to later nodes
        values += outgoing * sum(EDGE_VALUES[name][index] for name in computed) * part * out_area
        if any(_READS_RELU.get(name, (False, False))[index] for name in computed):
            values += part * area
        if (partial_channels > 1 or edge_normalization) and outgoing > 1 and any(
            name in _GROUPED_CONVOLUTIONS for name in computed
        ):
            values += outgoing * part * area
        if any(_READS_STATE.get(name, (False, False))[index] for name in computed):
            values += part * area
        if bypassed and index == 1:  # the 2x2 max pooling of the bypass: the state and int64 indices
            values += width * area + 2 * bypassed * out_area
            values += bypassed * out_area if edge_normalization else 0
        elif bypassed and edge_normalization:
            values += width * area
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
) -> tuple[float, int]:
    """Saved values per sample of a forward with weight gradients, and the largest cell's state values."""
    height, width = image_size
    # The stem keeps the images (conv input) and its BN input.
    values = float((in_channels + stem_multiplier * init_channels) * height * width)
    largest_states = 0
    shapes = _cell_shapes(image_size, init_channels, cells, internal_nodes, stem_multiplier)
    for shape in shapes:
        cell, states = _cell_values(primitives, internal_nodes, shape, partial_channels, edge_normalization)
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
    )
    batch = training.batch_size
    state = _FLOAT_BYTES * (3 * weights + 4 * arch)
    saved = math.ceil(_FLOAT_BYTES * batch * per_sample)
    image_values = in_channels * image_size[0] * image_size[1]
    workspace = _FLOAT_BYTES * batch * (2 * image_values + largest_states)
    if training.order == "second":
        workspace += _FLOAT_BYTES * 2 * weights  # w' and v of the unrolled step
    dataset = 2 * _FLOAT_BYTES * num_samples * image_values if num_samples else 0
    return SearchEstimate(weights, arch, state, saved, workspace, dataset)


# --------------------------------------------------------------------------------------- measurement


def _storage_key(tensor: torch.Tensor) -> tuple[int, int] | None:
    try:
        storage = tensor.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less tensors
        return None
    # Meta storages have no data pointer (all are 0): the storage object's own address tells them apart.
    address = storage._cdata if tensor.device.type == "meta" else storage.data_ptr()
    return address, storage.nbytes()


class SavedTensorMeter:
    """Counts the activation bytes autograd saves for backward (unique storages).

    ``total_bytes``: every storage packed while active (one forward/backward: what its graph holds).
    ``peak_live_bytes``: the largest sum of packed storages alive at the same time (storages leave the
    count when the last packed tensor of that storage is freed, i.e. when its graph is released).
    Storages of ``exclude`` (parameters and buffers) are never counted.
    """

    def __init__(self, exclude: Sequence[torch.Tensor] = ()):
        self._excluded = {key for key in map(_storage_key, exclude) if key is not None}
        self._seen: set[tuple[int, int]] = set()
        self._live: dict[tuple[int, int], int] = {}
        self.total_bytes = 0
        self.live_bytes = 0
        self.peak_live_bytes = 0

    def _release(self, key: tuple[int, int]) -> None:
        self._live[key] -= 1
        if self._live[key] == 0:
            del self._live[key]
            self.live_bytes -= key[1]

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = _storage_key(tensor)
        if key is None or key in self._excluded or key[1] == 0:
            return tensor
        if key not in self._seen:
            self._seen.add(key)
            self.total_bytes += key[1]
        if key not in self._live:
            self._live[key] = 0
            self.live_bytes += key[1]
            self.peak_live_bytes = max(self.peak_live_bytes, self.live_bytes)
        self._live[key] += 1
        weakref.finalize(tensor, self._release, key)
        return tensor

    @contextlib.contextmanager
    def active(self) -> Iterator[SavedTensorMeter]:
        with torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor):
            yield self


def _tensor_bytes(tensors: Iterator[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))


def measure_step(
    config: SearchConfig, *, in_channels: int, image_size: tuple[int, int], num_classes: int, seed: int = 0
) -> dict[str, int]:
    """Measure one real bilevel step of ``config`` on CPU (fp32) on random data.

    Returns ``state_bytes`` (parameters, gradients and optimizer states after the step, counted from
    the tensors) and ``saved_bytes`` (the peak of live saved activations during the second step, when
    the optimizers have their states; :class:`SavedTensorMeter`). Allocates what the step needs: use
    small configurations.
    """
    space, network_config, training = config.search_space, config.network, config.training
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    network = SearchNetwork(
        in_channels,
        num_classes,
        init_channels=network_config.init_channels,
        cells=network_config.cells,
        internal_nodes=space.internal_nodes,
        stem_multiplier=network_config.stem_multiplier,
        primitives=list(space.primitives),
        partial_channels=space.partial_channels,
        edge_normalization=space.edge_normalization,
    )
    search = DartsSearch(network, order=training.order, epochs=1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.randn(training.batch_size, in_channels, *image_size, generator=generator)
        labels = torch.randint(0, num_classes, (training.batch_size,), generator=generator)
        return images, labels

    search.step(batch(), batch())
    meter = SavedTensorMeter([*network.parameters(), *network.buffers()])
    with meter.active():
        search.step(batch(), batch())
    parameters = list(network.parameters())
    optimizer_states = [
        value
        for optimizer in (search.weight_optimizer, search.arch_optimizer)
        for state in optimizer.state.values()
        for value in state.values()
        if isinstance(value, torch.Tensor) and value.dim() > 0
    ]
    state_bytes = (
        _tensor_bytes(iter(parameters))
        + _tensor_bytes(p.grad for p in parameters if p.grad is not None)
        + _tensor_bytes(iter(optimizer_states))
    )
    return {"state_bytes": state_bytes, "saved_bytes": meter.peak_live_bytes}


# ------------------------------------------------------------------------------------------ retraining


def _training_network(
    config: TrainingJobConfig, genotype: Genotype, in_channels: int, num_classes: int
) -> GenotypeNetwork:
    network = GenotypeNetwork(
        genotype,
        in_channels,
        num_classes,
        init_channels=config.network.init_channels,
        cells=config.network.cells,
        auxiliary=config.network.auxiliary,
        drop_path_prob=config.network.drop_path_prob,
    )
    return network.train()


def _training_loss(
    network: GenotypeNetwork, images: torch.Tensor, labels: torch.Tensor, weight: float
) -> torch.Tensor:
    output = network(images)
    if isinstance(output, tuple):
        return F.cross_entropy(output[0], labels) + weight * F.cross_entropy(output[1], labels)
    return F.cross_entropy(output, labels)


def _state_bytes(weights: int, momentum: float) -> int:
    # Parameters and gradients; SGD keeps a momentum buffer per parameter only when momentum > 0.
    return _FLOAT_BYTES * (3 if momentum > 0 else 2) * weights


def estimate_training(
    config: TrainingJobConfig,
    input_shape: Sequence[int],
    num_classes: int,
    genotype: Genotype,
    *,
    num_samples: int | None = None,
) -> SearchEstimate:
    """Estimate what the retraining of ``genotype`` under ``config`` needs on ``input_shape`` (C x H x W)
    images in ``num_classes`` classes (``num_samples`` training images when known, for
    ``dataset_bytes``); the same kind of estimate as :func:`estimate_search` (``arch_weights`` is 0).

    * ``weights``: every trainable parameter, the auxiliary head's included (it is trained);
    * ``state_bytes``: parameters, gradients and SGD's momentum buffers, fp32;
    * ``saved_bytes``: the activations autograd keeps for backward during one training step at
      ``training.batch_size``, measured by running the training-mode forward pass and the loss on the
      ``meta`` device (shapes only: nothing is allocated and nothing computed), drop-path at its final
      probability;
    * ``workspace_bytes``: the batch (images, their cutout copy, labels) and the activation gradients
      alive while one cell runs backward (its two inputs and its output);
    * ``dataset_bytes``: the training images held twice (the dataset and its training/validation split).

    Cheap (milliseconds to a tenth of a second for the DARTS CIFAR-10 network). fp32 figures: under bf16
    autocast on CUDA the activations are smaller.

    Raises:
        ValueError: an invalid genotype or shape.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(size, int) and size > 0 for size in shape):
        raise ValueError(f"input_shape must be three positive sizes C x H x W, got {input_shape!r}")
    batch = config.training.batch_size
    with torch.device("meta"):
        network = _training_network(config, genotype, shape[0], num_classes)
        images = torch.zeros(batch, *shape)
        labels = torch.zeros(batch, dtype=torch.long)
    weights = sum(p.numel() for p in network.parameters())
    meter = SavedTensorMeter([*network.parameters(), *network.buffers()])
    # BatchNorm is slow on the meta device (a Python decomposition, ~10 ms a call), so each distinct
    # cell (inputs, output width, kind) is run once; its repeats add what the first one saved.
    known: dict[tuple[object, ...], tuple[int, torch.Size]] = {}
    repeated_bytes = 0
    largest_cell_values = 0

    def cached_forward(cell: GenotypeCell) -> None:
        run = cell.forward

        def forward(s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
            nonlocal repeated_bytes, largest_cell_values
            reduces_input = isinstance(cell.preprocess0, ReduceChannels2d)
            key = (cell.is_reduction, reduces_input, s0.shape, s1.shape, cell.out_channels, drop_prob > 0)
            if key in known:
                saved, out_shape = known[key]
                repeated_bytes += saved
                return torch.zeros(out_shape, device="meta", requires_grad=True)
            before = meter.total_bytes
            output = run(s0, s1, drop_prob)
            known[key] = (meter.total_bytes - before, output.shape)
            largest_cell_values = max(largest_cell_values, s0.numel() + s1.numel() + output.numel())
            return output

        cell.forward = forward  # type: ignore[method-assign]  # this throwaway network's only

    for module in network.modules():
        if isinstance(module, GenotypeCell):
            cached_forward(module)
    network.drop_path_prob = config.network.drop_path_prob
    with meter.active():
        _training_loss(network, images, labels, config.network.auxiliary_weight)
    image_bytes = _FLOAT_BYTES * batch * math.prod(shape)
    workspace = 2 * image_bytes + 8 * batch + _FLOAT_BYTES * largest_cell_values
    dataset = 2 * _FLOAT_BYTES * num_samples * math.prod(shape) if num_samples else 0
    return SearchEstimate(
        weights=weights,
        arch_weights=0,
        state_bytes=_state_bytes(weights, config.training.momentum),
        saved_bytes=meter.total_bytes + repeated_bytes,  # all of it lives until backward
        workspace_bytes=workspace,
        dataset_bytes=dataset,
    )


def measure_training_step(
    config: TrainingJobConfig, input_shape: Sequence[int], num_classes: int, genotype: Genotype, seed: int = 0
) -> dict[str, int]:
    """Measure one real training step of ``config`` on CPU (fp32) on random data, as :func:`measure_step`
    does for a search: ``state_bytes`` (parameters, gradients, optimizer states after the second step)
    and ``saved_bytes`` (the peak of live saved activations during the second step)."""
    torch.manual_seed(seed)
    network = _training_network(config, genotype, input_shape[0], num_classes)
    training = config.training
    optimizer = torch.optim.SGD(
        network.parameters(), lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay
    )
    meter = SavedTensorMeter([*network.parameters(), *network.buffers()])
    for step in range(2):
        images = torch.randn(training.batch_size, *input_shape)
        labels = torch.randint(0, num_classes, (training.batch_size,))
        optimizer.zero_grad(set_to_none=True)
        with meter.active() if step == 1 else contextlib.nullcontext():
            loss = _training_loss(network, images, labels, config.network.auxiliary_weight)
        loss.backward()
        optimizer.step()
    parameters = list(network.parameters())
    states = [value for state in optimizer.state.values() for value in state.values()
              if isinstance(value, torch.Tensor) and value.dim() > 0]  # fmt: skip
    state_bytes = (
        _tensor_bytes(iter(parameters))
        + _tensor_bytes(p.grad for p in parameters if p.grad is not None)
        + _tensor_bytes(iter(states))
    )
    return {"state_bytes": state_bytes, "saved_bytes": meter.peak_live_bytes}
