"""Memory-saving autograd Functions: max-pooling and the depthwise-pointwise pair of the separable
convolutions recompute in backward what autograd would keep, and the switch that turns them off where
second derivatives are needed (:func:`twice_differentiable`).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["recomputes_in_backward", "twice_differentiable"]


_TWICE_DIFFERENTIABLE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "darts_core_twice_differentiable", default=False
)


@contextlib.contextmanager
def twice_differentiable() -> Iterator[None]:
    """Inside, the operations use plain PyTorch functions instead of the memory-saving autograd Functions.

    The search step never differentiates twice, so :class:`DilConv2d`, :class:`MaxPoolBN2d` and the
    cell recompute in backward what autograd would keep. Hessian-vector products
    (:mod:`darts_core.search.collapse`, with ``torch.func``) need second derivatives and the functorch
    transforms: they run the network inside this context. Same values; more memory kept.
    """
    token = _TWICE_DIFFERENTIABLE.set(True)
    try:
        yield
    finally:
        _TWICE_DIFFERENTIABLE.reset(token)


def recomputes_in_backward(x: torch.Tensor) -> bool:
    """Whether the memory-saving autograd Functions apply to ``x`` now.

    Not under autocast (they run the plain kernels in fp32), not without autograd (nothing is kept
    then), and not inside :func:`twice_differentiable`. On the ``meta`` device (shapes only, as
    :func:`darts_core.estimate.estimate_training` runs a network) they apply as on the CPU.
    """
    device_type = "cpu" if x.device.type == "meta" else x.device.type  # autocast knows no meta
    return (
        torch.is_grad_enabled()
        and not torch.is_autocast_enabled(device_type)
        and not _TWICE_DIFFERENTIABLE.get()
    )


class _MaxPool3x3(torch.autograd.Function):
    """3x3 max pooling (padding 1) that keeps only its input for backward, not the int64 argmax indices.

    The indices (twice the bytes of a float activation) are recomputed in backward by the same kernel,
    so the gradient is the native one. The input is a cell state, which the edge's average pooling
    keeps anyway. Not twice differentiable; under autocast the plain pooling runs instead.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, stride: int) -> torch.Tensor:
        ctx.stride = stride
        ctx.save_for_backward(x)
        return F.max_pool2d(x, 3, stride, 1)

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


class _DepthwisePointwise(torch.autograd.Function):
    """``pointwise(depthwise(x))`` that keeps only ``x`` and the two kernels for backward.

    Autograd would keep the depthwise output (the pointwise convolution's input, one activation per
    block); backward recomputes it instead, one depthwise convolution (about 7 % of a step). Over the
    six blocks of every mixed edge that is 29 % of the activations a search step keeps (1215 -> 858 MB
    at batch 16, benchmarks/README.md). ``x`` is the ReLU a cell shares between edges, kept anyway.
    Not twice differentiable; under autocast the plain convolutions run instead.
    """

    @staticmethod
    def forward(
        ctx: Any, x: torch.Tensor, depthwise: torch.Tensor, pointwise: torch.Tensor, conv: nn.Conv2d
    ) -> torch.Tensor:
        ctx.conv = conv
        ctx.save_for_backward(x, depthwise, pointwise)
        return F.conv2d(_depthwise(x, depthwise, conv), pointwise)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, depthwise, pointwise = ctx.saved_tensors
        conv = ctx.conv
        needs_x, needs_depthwise, needs_pointwise = ctx.needs_input_grad[:3]
        grad_x = grad_depthwise = grad_pointwise = None
        if needs_pointwise:
            hidden = _depthwise(x, depthwise, conv)
        else:  # only the shape (and layout) of the pointwise input matters: skip the recomputation
            channels_last = grad.dim() == 4 and grad.is_contiguous(memory_format=torch.channels_last)
            hidden = torch.empty(
                (grad.shape[0], pointwise.shape[1], *grad.shape[2:]),
                dtype=x.dtype,
                device=x.device,
                memory_format=torch.channels_last if channels_last else torch.contiguous_format,
            )
        grad_hidden, grad_pointwise, _ = torch.ops.aten.convolution_backward(
            grad, hidden, pointwise, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
            [needs_x or needs_depthwise, needs_pointwise, False],
        )
        if needs_x or needs_depthwise:
            grad_x, grad_depthwise, _ = torch.ops.aten.convolution_backward(
                grad_hidden, x, depthwise, None, list(conv.stride), list(conv.padding), list(conv.dilation),
                False, [0, 0], conv.groups, [needs_x, needs_depthwise, False],
            )
        return grad_x, grad_depthwise, grad_pointwise, None


def _depthwise(x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
