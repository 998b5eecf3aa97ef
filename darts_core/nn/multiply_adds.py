"""Multiply-adds of a forward pass, the network cost DARTS reports next to the parameter count."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["count_multiply_adds"]


def _layer_multiply_adds(module: nn.Module, output: Tensor) -> int:
    """Multiply-adds of one Conv2d or Linear call, per sample of the batch of ``output``."""
    per_sample = output.numel() // output.shape[0]
    if isinstance(module, nn.Conv2d):
        kernel_h, kernel_w = module.kernel_size
        return per_sample * (module.in_channels // module.groups) * kernel_h * kernel_w
    assert isinstance(module, nn.Linear)
    return per_sample * module.in_features


def count_multiply_adds(network: nn.Module, input_shape: Sequence[int]) -> int:
    """Multiply-adds of one eval-mode forward pass of ``network`` on one sample of ``input_shape``.

    Counted by forward hooks on every :class:`~torch.nn.Conv2d` (``output elements x in_channels /
    groups x kernel area``) and :class:`~torch.nn.Linear` (``output elements x in_features``) that
    actually runs; biases, BatchNorm, pooling, activations and additions are not counted (the usual
    "multi-adds" convention). In eval mode the auxiliary head of a
    :class:`~darts_core.nn.genotype_network.GenotypeNetwork` does not run, so it is left out, and drop-path
    is off. A module called twice counts twice.

    Args:
        network: the network (left in the mode it was in; its parameters are not changed).
        input_shape: ``C x H x W`` of one sample.

    Raises:
        ValueError: ``input_shape`` is not three positive sizes.
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or not all(isinstance(size, int) and size > 0 for size in shape):
        raise ValueError(f"input_shape must be three positive sizes C x H x W, got {input_shape!r}")
    total = 0

    def hook(module: nn.Module, _inputs: Any, output: Tensor) -> None:
        nonlocal total
        total += _layer_multiply_adds(module, output)

    handles = [
        module.register_forward_hook(hook)
        for module in network.modules()
        if isinstance(module, nn.Conv2d | nn.Linear)
    ]
    was_training = network.training
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        network.eval()
        with torch.no_grad():
            network(torch.zeros((1, *shape), device=device))
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return total
