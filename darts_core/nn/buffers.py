"""Leaving a module's buffers (BatchNorm running statistics) as a block of forwards found them."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

__all__ = ["buffers_preserved"]


@contextlib.contextmanager
def buffers_preserved(module: nn.Module) -> Iterator[None]:
    """Every buffer of ``module`` is copied on entry and written back in place on exit, however the block
    ends: forwards inside (train-mode BatchNorm, say) leave no trace in the running statistics."""
    buffers = list(module.buffers())
    saved = [buffer.clone() for buffer in buffers]
    try:
        yield
    finally:
        with torch.no_grad():
            torch._foreach_copy_(buffers, saved)
