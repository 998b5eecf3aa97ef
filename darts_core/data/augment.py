"""The DARTS augmentation, batched on the device: random crop with zero padding and horizontal flip.

The DARTS reference code applies ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()`` to its
CIFAR-10 training images, one PIL image at a time. :class:`RandomCropFlip` does the same to a whole batch
in one gather: per image one crop offset in ``[0, 2 x padding]`` on each axis of the zero-padded image
and one flip decision (probability 1/2), drawn from a ``torch.Generator`` the caller owns (the search and
the training derive one per epoch from their seed, so a run resumed from a checkpoint draws what the
uninterrupted one drew). The padding is zero in the normalised batch, i.e. the dataset's mean colour.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["RandomCropFlip", "default_crop_padding", "resolve_augmentation", "epoch_generator"]

#: Datasets of natural images, where the augmentation is on by default (``npz``: only a stored image
#: folder, which names its classes). Digits are off (a flipped digit is another digit), synthetic too.
_NATURAL_IMAGE_DATASETS = ("cifar10", "folder")


def default_crop_padding(height: int, width: int) -> int:
    """The reference's 4 pixels at 32 x 32, scaled with the shorter image side (at least 1)."""
    return max(1, round(4 * min(height, width) / 32))


@dataclass(frozen=True)
class RandomCropFlip:
    """Random crop (``padding`` pixels of zeros on every side, then a crop of the original size) and
    random horizontal flip, per image of a batch. ``B x C x H x W`` -> the same shape, a new tensor."""

    padding: int = 4
    horizontal_flip: bool = True

    @property
    def active(self) -> bool:
        return self.padding > 0 or self.horizontal_flip

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """Augment ``images``; the draws (``3 x B`` numbers) come from ``generator`` (a CPU generator)."""
        if not self.active:
            return images
        batch, _, height, width = images.shape
        pad = self.padding
        dy = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        dx = torch.randint(0, 2 * pad + 1, (batch,), generator=generator)
        flip = torch.rand(batch, generator=generator) < 0.5
        if not self.horizontal_flip:
            flip = torch.zeros_like(flip)
        device = images.device
        dy, dx, flip = dy.to(device), dx.to(device), flip.to(device)
        rows = dy[:, None] + torch.arange(height, device=device)  # B x H, in padded coordinates
        columns = torch.arange(width, device=device)
        columns = torch.where(flip[:, None], width - 1 - columns, columns) + dx[:, None]  # B x W
        padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
        index = torch.arange(batch, device=device)[:, None, None]
        # padded[b, :, rows[b, i], columns[b, j]] for every b, i, j: B x H x W x C, back to B x C x H x W
        gathered = padded.permute(0, 2, 3, 1)[index, rows[:, :, None], columns[:, None, :]]
        return gathered.permute(0, 3, 1, 2).contiguous(memory_format=_memory_format(images))


def _memory_format(images: Tensor) -> torch.memory_format:
    if images.dim() == 4 and images.is_contiguous(memory_format=torch.channels_last):
        if not images.is_contiguous():
            return torch.channels_last
    return torch.contiguous_format


def resolve_augmentation(
    crop_padding: int | None,
    horizontal_flip: bool | None,
    dataset_name: str,
    image_size: tuple[int, int],
    class_names: tuple[str, ...] = (),
) -> RandomCropFlip:
    """The augmentation a spec asks for; ``None`` fields take the dataset's default: on for ``cifar10``,
    image folders and stored folders (an ``npz`` with ``class_names``), off for the others."""
    natural = dataset_name in _NATURAL_IMAGE_DATASETS or (dataset_name == "npz" and bool(class_names))
    if crop_padding is None:
        crop_padding = default_crop_padding(*image_size) if natural else 0
    if horizontal_flip is None:
        horizontal_flip = natural
    return RandomCropFlip(crop_padding, horizontal_flip)


def epoch_generator(seed: int, epoch: int, stream: int) -> torch.Generator:
    """A CPU generator seeded from ``(seed, epoch, stream)`` only: a resumed run draws what the
    uninterrupted one drew from the same epoch on (no state to checkpoint)."""
    derived = int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(derived)
