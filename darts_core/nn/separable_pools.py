"""The 3x3 pools of the search computed separably (row maxima or sums, then column ones), for the
grouped PC-DARTS edges: torch's CPU pooling kernels are slow on few channels."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darts_core.nn.ops import AvgPoolBN2d, MaxPoolBN2d

__all__: list[str] = []


def _channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def _pool(op: MaxPoolBN2d | AvgPoolBN2d, x: torch.Tensor) -> torch.Tensor:
    """``op.forward_before_bn(x)``; the 3x3 pools (padding 1, stride 1 or 2) computed separably.

    torch's CPU 3x3 pooling kernels are slow on few channels (channels_last, batch 16, 32x32, 4
    channels: 1-2 ms, against 0.02 ms for an elementwise maximum): a 3x3 window is the 3-wide window of
    the 3-tall one, so four elementwise maxima (or sums) give the stride-1 pooling, and stride 2 takes
    its even pixels. Same values (the maxima exactly; the averages up to float rounding).
    """
    pool = op.pool
    stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
    if (
        x.dim() != 4
        or pool.kernel_size not in (3, (3, 3))
        or pool.padding not in (1, (1, 1))
        or pool.stride not in (1, 2, (1, 1), (2, 2))
        or pool.ceil_mode
        or (isinstance(pool, nn.AvgPool2d) and (pool.count_include_pad or pool.divisor_override))
        or (isinstance(pool, nn.MaxPool2d) and pool.dilation not in (1, (1, 1)))
    ):
        return op.forward_before_bn(x)
    if isinstance(op, MaxPoolBN2d):
        return _SeparableMaxPool3x3.apply(x, stride)
    padded = F.pad(x, (1, 1, 1, 1))
    rows = padded[:, :, :, :-2] + padded[:, :, :, 1:-1] + padded[:, :, :, 2:]
    total = rows[:, :, :-2] + rows[:, :, 1:-1] + rows[:, :, 2:]
    counts = _window_counts(x.shape[-2], x.shape[-1], x)
    if stride == 2:
        total, counts = total[:, :, ::2, ::2], counts[::2, ::2]
    return total / counts


def _window_counts(height: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """``(H, W)``: how many pixels of the image each 3x3 window (padding 1) covers."""

    def along(size: int) -> torch.Tensor:
        counts = torch.full((size,), 3.0, dtype=like.dtype, device=like.device)
        counts[0] -= 1  # the first and last windows reach one pixel of padding (both, for one pixel)
        counts[-1] -= 1
        return counts

    return along(height)[:, None] * along(width)[None, :]


class _SeparableMaxPool3x3(torch.autograd.Function):
    """3x3 max pooling (padding 1) as four elementwise maxima; backward as
    ``darts_core.nn.recompute._MaxPool3x3``.

    Keeps only its input for backward, which recomputes the argmax with the native kernel.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.stride = stride
        ctx.save_for_backward(x)
        padded = F.pad(x, (1, 1, 1, 1), value=float("-inf"))
        rows = torch.maximum(torch.maximum(padded[:, :, :, :-2], padded[:, :, :, 1:-1]), padded[:, :, :, 2:])
        out = torch.maximum(torch.maximum(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])
        if stride == 2:
            out = out[:, :, ::2, ::2]
        if _channels_last(x):
            return out.contiguous(memory_format=torch.channels_last)
        return out.contiguous()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (x,) = ctx.saved_tensors
        stride = [ctx.stride, ctx.stride]
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, [3, 3], stride, [1, 1], [1, 1], False)
        grad_x = torch.ops.aten.max_pool2d_with_indices_backward(
            grad, x, [3, 3], stride, [1, 1], [1, 1], False, indices
        )
        return grad_x, None
