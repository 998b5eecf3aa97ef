"""The layout both DARTS networks share: the stem, and where the reduction cells go."""

from __future__ import annotations

from torch import nn


def _is_reduction(index: int, cells: int) -> bool:
    """DARTS places its two reduction cells at one third and two thirds of the depth."""
    return index in (cells // 3, 2 * cells // 3)


def _check_positive(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _stem(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 convolution (no bias) and BN: N x in_channels x H x W -> N x out_channels x H x W."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    )
