"""All the mixed edges that read one state, run as one set of grouped operations (PC-DARTS mode).

With partial channels every operation of an edge sees ``c / K`` channels (4 in the DARTS CIFAR
configuration with ``K = 4``). On CPU a convolution or BatchNorm over so few channels costs nearly as
much as over four times more (channels_last, batch 16, 32x32: a 3x3 depthwise forward + backward 0.46 ms
on 4 channels, 0.60 ms on 16; a BatchNorm 0.87 ms on 4 channels, 0.54 ms on 16), so the cell runs each
operation once for all the ``m`` edges that leave the same state, on ``m x c / K`` channels:

- a depthwise convolution over the state's ReLU repeated ``m`` times on the channel axis (kernels
  concatenated, ``groups = m x c / K``), then one 1x1 convolution whose weight is the block-diagonal
  matrix of the ``m`` edges' weights (:class:`_GroupedDepthwisePointwise`). The repetition is made once
  per state for all the grouped convolutions that read it and kept for their backward; the depthwise
  output is not kept, backward rebuilds it;
- one BatchNorm over the ``m`` edges' channels, their running statistics concatenated and written back,
  the edges' weights ``alpha x beta`` folded in (:func:`grouped_batch_norm`);
- the pools are computed once per state already; their BatchNorms run grouped on the pooled tensor
  repeated ``m`` times.

The value is each edge's :class:`~darts_core.nn.mixed_op.MixedOp` output (to float rounding); skip
connections and any operation of another type are run edge by edge as before. Only where the
memory-saving autograd Functions apply (:func:`~darts_core.nn.recompute.recomputes_in_backward`):
under autocast, without autograd or inside :func:`~darts_core.nn.recompute.twice_differentiable` the
edges run one by one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from darts_core.nn.mixed_op import MixedOp, _run_op_scaled
from darts_core.nn.ops import (
    AvgPoolBN2d,
    DilConv2d,
    MaxPoolBN2d,
    SepConv2d,
    batch_norm_scaled,
)
from darts_core.nn.recompute import recomputes_in_backward
from darts_core.nn.separable_pools import _channels_last, _pool

__all__ = ["grouped_batch_norm", "run_edges_of_state"]

_GROUPED = (DilConv2d, SepConv2d, MaxPoolBN2d, AvgPoolBN2d)


def _repeat_channels(x: torch.Tensor, times: int) -> torch.Tensor:
    """``(N, C, H, W) -> (N, times x C, H, W)``, copy ``t`` in channels ``t x C ...``; layout kept."""
    return x if times == 1 else torch.cat([x] * times, dim=1)


def _sum_channel_copies(grad: torch.Tensor, times: int) -> torch.Tensor:
    """Backward of :func:`_repeat_channels`: the sum of the ``times`` channel blocks, layout kept."""
    if times == 1:
        return grad
    if _channels_last(grad):
        nhwc = grad.permute(0, 2, 3, 1)
        return nhwc.unflatten(3, (times, -1)).sum(3).permute(0, 3, 1, 2)
    return grad.unflatten(1, (times, -1)).sum(1)


class _GroupedDepthwisePointwise(torch.autograd.Function):
    """``pointwise(depthwise(repeat(x)))`` keeping only ``x`` and the two kernels for backward.

    :class:`darts_core.nn.recompute._DepthwisePointwise` for ``m`` blocks at once: ``x`` ``(N, C, H, W)`` is
    repeated ``repeat`` times on the channel axis (1: it already holds the ``m`` blocks' channels), the
    depthwise kernel is ``(m x C, 1, k, k)`` and the pointwise one the block-diagonal ``(m x C_out, m x
    C, 1, 1)``. Backward rebuilds the depthwise output rather than keep it. ``repeated``, when given,
    is ``repeat(x)`` already computed (without autograd) and shared by the calls that read the same
    ``x``: it is used and kept for backward instead of being rebuilt in each call's forward and backward.
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        depthwise: torch.Tensor,
        pointwise: torch.Tensor,
        repeat: int,
        conv: nn.Conv2d,
        repeated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        ctx.conv, ctx.repeat, ctx.shared = conv, repeat, repeated is not None
        if repeated is None:
            ctx.save_for_backward(x, depthwise, pointwise)
            repeated = _repeat_channels(x, repeat)
        else:
            ctx.save_for_backward(x, depthwise, pointwise, repeated)
        return F.conv2d(_depthwise(repeated, depthwise, conv), pointwise)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, depthwise, pointwise, *shared = ctx.saved_tensors
        conv, repeat = ctx.conv, ctx.repeat
        needs_x, needs_depthwise, needs_pointwise = ctx.needs_input_grad[:3]
        grad_x = grad_depthwise = grad_pointwise = None
        layout = torch.channels_last if _channels_last(grad) else torch.contiguous_format
        repeated: torch.Tensor | None = shared[0] if shared else None
        if repeated is None and (needs_pointwise or needs_depthwise):
            repeated = _repeat_channels(x, repeat)
        if needs_pointwise:
            assert repeated is not None
            hidden = _depthwise(repeated, depthwise, conv)
        else:  # only the shape (and layout) of the pointwise input matters: skip the recomputation
            hidden = torch.empty(
                (grad.shape[0], pointwise.shape[1], *grad.shape[2:]),
                dtype=x.dtype,
                device=x.device,
                memory_format=layout,
            )
        grad_hidden, grad_pointwise, _ = torch.ops.aten.convolution_backward(
            grad,
            hidden,
            pointwise,
            None,
            [1, 1],
            [0, 0],
            [1, 1],
            False,
            [0, 0],
            1,
            [needs_x or needs_depthwise, needs_pointwise, False],
        )
        if needs_x or needs_depthwise:
            if repeated is None:  # the input's shape is all the input gradient needs
                repeated = torch.empty(
                    (x.shape[0], x.shape[1] * repeat, *x.shape[2:]),
                    dtype=x.dtype,
                    device=x.device,
                    memory_format=layout,
                )
            settings = _conv_settings(conv)
            if settings is None:
                grad_repeated, grad_depthwise, _ = torch.ops.aten.convolution_backward(
                    grad_hidden, repeated, depthwise, None, list(conv.stride), list(conv.padding),
                    list(conv.dilation), False, [0, 0], depthwise.shape[0], [needs_x, needs_depthwise, False],
                )
            else:
                grad_repeated, grad_depthwise = _depthwise_backward(
                    grad_hidden, repeated, depthwise, *settings, needs_x, needs_depthwise
                )
            if needs_x:
                grad_x = _sum_channel_copies(grad_repeated, repeat)
        return grad_x, grad_depthwise, grad_pointwise, None, None, None


def _conv_settings(conv: nn.Conv2d) -> tuple[int, int, int] | None:
    """``(stride, padding, dilation)`` of a convolution with the same setting on both axes, else ``None``."""
    stride, padding, dilation = conv.stride, conv.padding, conv.dilation
    if isinstance(padding, str) or len(set(stride)) * len(set(padding)) * len(set(dilation)) != 1:
        return None
    return stride[0], padding[0], dilation[0]


def _depthwise(x: torch.Tensor, weight: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, weight.shape[0])


def _polyphase(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (4 N, C, H / 2, W / 2)``, channels_last: the four pixel parities as batch entries.

    Entry ``(2 r + s) N + n`` is ``x[n, :, r::2, s::2]``. ``H`` and ``W`` even.
    """
    n, c, h, w = x.shape
    out = torch.empty(
        (4 * n, c, h // 2, w // 2), dtype=x.dtype, device=x.device, memory_format=torch.channels_last
    )
    out.view(2, 2, n, c, h // 2, w // 2).copy_(
        x.unflatten(2, (h // 2, 2)).unflatten(4, (w // 2, 2)).permute(3, 5, 0, 1, 2, 4)
    )
    return out


def _zeros(shape_of: torch.Tensor, like: torch.Tensor, layout: torch.memory_format) -> torch.Tensor:
    return torch.zeros(shape_of.shape, dtype=like.dtype, device=like.device).contiguous(memory_format=layout)


def _depthwise_backward(
    grad: torch.Tensor,
    x: torch.Tensor,
    weight: torch.Tensor,
    stride: int,
    padding: int,
    dilation: int,
    needs_x: bool,
    needs_weight: bool,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The gradients of the depthwise convolution of ``x`` by ``weight`` for its output gradient ``grad``.

    oneDNN's depthwise backward on CPU is fast only for undilated stride-1 3x3 kernels. Measured on 16
    channels (channels_last, batch 16, 32x32): a dilated or 5x5 kernel's input gradient takes 0.7-2.5
    ms and its weight gradient 2.1-9.5 ms, against 0.2-0.4 ms for a forward convolution; stride 2 is
    slower still. So, for a square kernel padded to keep the size at stride 1:

    - stride 1: the input gradient is the forward convolution of ``grad`` by the flipped kernel; the
      weight gradient of a dilation-2 kernel is the undilated kernel's over the four pixel parities of
      ``x`` and ``grad`` stacked in the batch (dilation 2 maps each parity onto itself): 1.3 ms instead
      of 5.2 (3x3), 3.4 instead of 9.1 (5x5);
    - stride 2 and dilation 2: only the even pixels are read: an undilated stride-1 convolution of
      ``x[:, :, ::2, ::2]``;
    - stride 2 and dilation 1: the stride-1 convolution's gradients for ``grad`` spread on the even
      pixels (zeros elsewhere).

    Anything else goes to ``aten.convolution_backward``. Same values up to float rounding.
    """
    size = weight.shape[-1]
    groups = weight.shape[0]
    same = (
        weight.shape[-2] == size
        and stride in (1, 2)
        and (size - 1) * dilation % 2 == 0
        and padding == dilation * (size - 1) // 2
    )
    if not same:
        grad_x, grad_weight, _ = torch.ops.aten.convolution_backward(
            grad, x, weight, None, [stride] * 2, [padding] * 2, [dilation] * 2, False, [0, 0], groups,
            [needs_x, needs_weight, False],
        )
        return grad_x, grad_weight
    layout = torch.channels_last if _channels_last(grad) else torch.contiguous_format
    if stride == 2 and dilation == 2 and padding % 2 == 0:
        even = x[:, :, ::2, ::2]
        if needs_weight:
            even = even.contiguous(memory_format=layout)
        grad_even, grad_weight = _depthwise_backward(
            grad, even, weight, 1, padding // 2, 1, needs_x, needs_weight
        )
        grad_x = None
        if grad_even is not None:
            grad_x = _zeros(x, grad, layout)
            grad_x[:, :, ::2, ::2] = grad_even
        return grad_x, grad_weight
    if stride == 2:
        spread = _zeros(x, grad, layout)
        spread[:, :, ::2, ::2] = grad
        return _depthwise_backward(spread, x, weight, 1, padding, dilation, needs_x, needs_weight)
    grad_x = grad_weight = None
    if needs_x:
        grad_x = F.conv2d(grad, weight.flip(-2, -1), None, 1, padding, dilation, groups)
    if needs_weight:
        if dilation == 2 and padding % 2 == 0 and x.shape[-2] % 2 == 0 and x.shape[-1] % 2 == 0:
            half = padding // 2
            _, grad_weight, _ = torch.ops.aten.convolution_backward(
                _polyphase(grad), _polyphase(x), weight, None, [1, 1], [half, half], [1, 1], False, [0, 0],
                groups, [False, True, False],
            )
        else:
            _, grad_weight, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], [padding] * 2, [dilation] * 2, False, [0, 0], groups,
                [False, True, False],
            )
    return grad_x, grad_weight

def _grouped_dil_conv(
    blocks: Sequence[DilConv2d], x_relu: torch.Tensor, repeat: int, repeated: torch.Tensor | None = None
) -> torch.Tensor:
    """The input of the ``m`` blocks' final BatchNorms, ``(N, m x C_out, H', W')``.

    ``x_relu``: the shared input (``repeat = m``) or the ``m`` blocks' inputs side by side (``repeat = 1``).
    ``repeated``: optional ``_repeat_channels(x_relu, repeat)`` computed once without autograd and shared.
    """
    depthwise = torch.cat([block.depthwise.weight for block in blocks])
    pointwise = torch.block_diag(*(block.pointwise.weight.flatten(1) for block in blocks))[:, :, None, None]
    return _GroupedDepthwisePointwise.apply(
        x_relu, depthwise, pointwise, repeat, blocks[0].depthwise, repeated
    )


def grouped_batch_norm(
    bns: Sequence[nn.modules.batchnorm._BatchNorm], x: torch.Tensor, scales: torch.Tensor | None = None
) -> torch.Tensor:
    """``cat([scales[i] * bns[i](x_i)])`` for ``x = cat([x_0, x_1, ...], 1)``, as one BatchNorm.

    Each ``bns[i]``'s running statistics and ``num_batches_tracked`` are updated as ``bns[i](x_i)``
    would update them (computed concatenated, then written back).

    Args:
        bns: ``m`` BatchNorms of ``C`` channels each, configured alike (momentum, eps, affine, tracking).
        x: ``(N, m x C, ...)``.
        scales: optional ``(m,)``; ``None``: 1.

    Returns:
        ``(N, m x C, ...)``.
    """
    first = bns[0]
    channels = first.num_features
    track = first.training and first.track_running_stats and first.num_batches_tracked is not None
    if (
        first.momentum is None
        and track
        and len({int(cast(torch.Tensor, bn.num_batches_tracked)) for bn in bns}) > 1
    ):
        # Cumulative averages at different counts have no common momentum: one BatchNorm per block.
        parts = x.split(channels, 1)
        if scales is None:
            return torch.cat([bn(part) for bn, part in zip(bns, parts, strict=True)], dim=1)
        return torch.cat(
            [batch_norm_scaled(bn, part, scale) for bn, part, scale in zip(bns, parts, scales, strict=True)],
            dim=1,
        )
    momentum = 0.0 if first.momentum is None else first.momentum
    if track:
        torch._foreach_add_([cast(torch.Tensor, bn.num_batches_tracked) for bn in bns], 1)
        if first.momentum is None:
            momentum = 1.0 / float(cast(torch.Tensor, first.num_batches_tracked))
    use_batch_stats = first.training or (first.running_mean is None and first.running_var is None)
    keep_running = not first.training or first.track_running_stats
    running_mean = running_var = None
    if keep_running and first.running_mean is not None and first.running_var is not None:
        running_mean = torch.cat([bn.running_mean for bn in bns])  # type: ignore[misc]
        running_var = torch.cat([bn.running_var for bn in bns])  # type: ignore[misc]
    weight = bias = None
    if first.weight is not None:
        weight = torch.cat([bn.weight for bn in bns])
        bias = torch.cat([bn.bias for bn in bns])
    if scales is not None:
        spread = scales.repeat_interleave(channels)
        weight = spread if weight is None else spread * weight
        bias = None if bias is None else spread * bias
    out = F.batch_norm(x, running_mean, running_var, weight, bias, use_batch_stats, momentum, first.eps)
    if running_mean is not None and running_var is not None and use_batch_stats and first.training:
        with torch.no_grad():
            targets = [cast(torch.Tensor, bn.running_mean) for bn in bns]
            targets += [cast(torch.Tensor, bn.running_var) for bn in bns]
            torch._foreach_copy_(targets, [*running_mean.split(channels), *running_var.split(channels)])
    return out


def _groupable(mixed_ops: Sequence[MixedOp], x: torch.Tensor) -> bool:
    if not mixed_ops or not recomputes_in_backward(x) or x.dim() != 4:
        return False
    first = mixed_ops[0]
    if not first._computed:
        return False
    for op in mixed_ops[1:]:
        if op._computed != first._computed or any(
            type(a) is not type(b) for a, b in zip(op.ops, first.ops, strict=True)
        ):
            return False
    return True


def run_edges_of_state(
    mixed_ops: Sequence[MixedOp],
    x: torch.Tensor,
    weights: torch.Tensor,
    x_relu: torch.Tensor | None,
    pooled: dict[tuple[type, Any], torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """The outputs of the mixed edges ``mixed_ops`` that all read the state ``x``.

    Args:
        mixed_ops: ``m`` edges built alike (same primitives, same stride).
        x: their input, ``(N, C, H, W)``.
        weights: ``(m, len(primitives))``, row ``i`` the (already softmaxed) weights of ``mixed_ops[i]``.
        x_relu: ``relu(x)`` when some operation starts with a ReLU.
        pooled: cache of ``x``'s pools before their BatchNorms, shared with other edges reading ``x``.

    Returns:
        ``m`` tensors ``(N, C, H', W')``: ``mixed_ops[i](x, weights[i], x_relu, pooled)``.
    """
    if not _groupable(mixed_ops, x):
        return [op(x, row, x_relu, pooled) for op, row in zip(mixed_ops, weights.unbind(0), strict=True)]
    count = len(mixed_ops)
    first = mixed_ops[0]
    if x_relu is None and first.needs_relu:
        x_relu = F.relu(x)
    if pooled is None:
        pooled = {}
    grouped: torch.Tensor | None = None
    singles: list[torch.Tensor | None] = [None] * count
    # The ReLU repeated once for all the grouped convolutions reading it (not once per convolution and
    # again in each one's backward); the repetition is kept for backward, shared.
    repeated: torch.Tensor | None = None

    def relu_repeated() -> torch.Tensor | None:
        nonlocal repeated
        if repeated is None and count > 1 and x_relu is not None:
            with torch.no_grad():
                repeated = _repeat_channels(x_relu, count)
        return repeated

    for k in first._computed:
        ops: list[Any] = [mixed.ops[k] for mixed in mixed_ops]  # one type (checked by _groupable)
        scales = weights[:, k]
        op = ops[0]
        term: torch.Tensor
        if isinstance(op, DilConv2d):
            assert x_relu is not None
            hidden = _grouped_dil_conv(ops, x_relu, count, relu_repeated())
            term = grouped_batch_norm([o.bn for o in ops], hidden, scales)
        elif isinstance(op, SepConv2d):
            assert x_relu is not None
            firsts = [o.first for o in ops]
            hidden = _grouped_dil_conv(firsts, x_relu, count, relu_repeated())
            middle = grouped_batch_norm([o.bn for o in firsts], hidden)
            seconds = [o.second for o in ops]
            hidden = _grouped_dil_conv(seconds, F.relu(middle), 1)
            term = grouped_batch_norm([o.bn for o in seconds], hidden, scales)
        elif isinstance(op, (MaxPoolBN2d, AvgPoolBN2d)):
            key = (type(op), op.pool.stride)
            if key not in pooled:
                pooled[key] = _pool(op, x)
            term = grouped_batch_norm([o.bn for o in ops], _repeat_channels(pooled[key], count), scales)
        else:  # skip connections and any other operation: edge by edge
            per_op = scales.unbind(0)
            for i, edge_op in enumerate(ops):
                single = _run_op_scaled(edge_op, x, x_relu, per_op[i], pooled)
                done = singles[i]
                singles[i] = single if done is None else done + single
            continue
        grouped = term if grouped is None else grouped + term
    parts: list[torch.Tensor | None] = (
        [None] * count if grouped is None else list(grouped.split(grouped.shape[1] // count, dim=1))
    )
    outputs: list[torch.Tensor] = []
    for part, alone in zip(parts, singles, strict=True):
        if part is None:
            assert alone is not None  # the edges compute at least one operation
            outputs.append(alone)
        else:
            outputs.append(part if alone is None else part + alone)
    return outputs
