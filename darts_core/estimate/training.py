"""A retraining's estimate: its discrete network's saved activations measured on the ``meta`` device."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from darts_core.estimate.meter import SavedTensorMeter, _tensor_bytes
from darts_core.estimate.search import _FLOAT_BYTES, SearchEstimate
from darts_core.nn.genotype_network import GenotypeCell, GenotypeNetwork
from darts_core.nn.ops import ReduceChannels2d
from darts_core.spec.genotype import Genotype
from darts_core.spec.training_spec import TrainingJobConfig

__all__ = ["estimate_training", "measure_training_step"]


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
