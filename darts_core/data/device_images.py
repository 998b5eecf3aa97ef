"""Images kept compact on the device and normalised batch by batch.

An :class:`~darts_core.data.registry.ImageDataset` of ``uint8`` pixels (image folders, ``uint8`` npz,
CIFAR-10) costs its pixel count in bytes. :func:`images_on_device` moves such images to the device as
they are and wraps them in :class:`DeviceImages`, whose indexing hands out float32 batches, scaled to
``[0, 1]`` and normalised per channel (``(x / 255 - mean) / std``); float32 images (digits, synthetic:
normalised when loaded) are moved as plain tensors, so nothing changes for them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["DeviceImages", "normalize_pixels", "images_on_device", "dataset_images_on_device"]


def normalize_pixels(pixels: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 ``B x C x H x W`` -> float32 ``(pixels / 255 - mean) / std``; ``mean``, ``std`` are ``C``."""
    shape = (1, -1, 1, 1)
    return pixels.float().div_(255.0).sub_(mean.view(shape)).div_(std.view(shape))


class DeviceImages:
    """uint8 images ``N x C x H x W`` on a device; ``images[index]`` is the normalised float32 batch.

    Indexing takes what a tensor's first axis takes (an index tensor, a slice) and keeps the memory
    format (channels-last stays channels-last).
    """

    def __init__(self, pixels: Tensor, mean: Sequence[float], std: Sequence[float]) -> None:
        if pixels.dtype != torch.uint8 or pixels.dim() != 4:
            shape = tuple(pixels.shape)
            raise ValueError(f"pixels: expected uint8 N x C x H x W, got {pixels.dtype} {shape}")
        if len(mean) != pixels.shape[1] or len(std) != pixels.shape[1]:
            raise ValueError(f"mean/std: expected {pixels.shape[1]} values each")
        self.pixels = pixels
        self.mean = torch.tensor(list(mean), dtype=torch.float32, device=pixels.device)
        self.std = torch.tensor(list(std), dtype=torch.float32, device=pixels.device)

    def __getitem__(self, index: Any) -> Tensor:
        return normalize_pixels(self.pixels[index], self.mean, self.std)

    def __len__(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def shape(self) -> torch.Size:
        return self.pixels.shape

    @property
    def device(self) -> torch.device:
        return self.pixels.device

    def dim(self) -> int:
        return 4


def images_on_device(
    images: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor | DeviceImages:
    """``images`` moved to ``device`` once, in ``memory_format``: uint8 ones wrapped in
    :class:`DeviceImages` (normalised per batch), float32 ones as they are (already normalised)."""
    moved = images.to(device).contiguous(memory_format=memory_format)
    if moved.dtype == torch.uint8:
        return DeviceImages(moved, mean, std)
    return moved


def dataset_images_on_device(
    dataset: Any,
    images: Tensor,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> Tensor | DeviceImages:
    """:func:`images_on_device` with the statistics of ``dataset`` (an
    :class:`~darts_core.data.registry.ImageDataset`; ``images`` are some of its ``x_train`` or
    ``x_test``)."""
    mean, std = getattr(dataset, "channel_mean", ()), getattr(dataset, "channel_std", ())
    return images_on_device(images, mean, std, device, memory_format)
