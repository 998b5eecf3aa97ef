"""The mixed operation of a DARTS edge, and the pieces a cell shares with it.

:class:`MixedOp` is the weighted sum of every candidate operation on one edge. The functions beside it
run one operation (folding the edge weight into its final BatchNorm, sharing a state's ReLU), hand a
node's gradient on contiguous, and shuffle channels (PC-DARTS); :class:`darts_core.nn.cell.Cell` uses them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darts_core.nn.ops import (
    DARTS_PRIMITIVES_2D,
    AvgPoolBN2d,
    EndsInBatchNorm,
    MaxPoolBN2d,
    PrimitiveFactory,
    StartsWithReLU,
    Zero2d,
    batch_norm_scaled,
)
from darts_core.nn.recompute import recomputes_in_backward

__all__ = ["MixedOp", "channel_shuffle"]


def _run_op(op: nn.Module, x: torch.Tensor, x_relu: torch.Tensor | None) -> torch.Tensor:
    if x_relu is not None and isinstance(op, StartsWithReLU):
        return op.forward_relu_applied(x_relu)
    return op(x)


def _run_op_scaled(
    op: nn.Module,
    x: torch.Tensor,
    x_relu: torch.Tensor | None,
    scale: torch.Tensor,
    pooled: dict[tuple[type, Any], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``scale * op(x)``; for an operation ending in a BatchNorm, the scale is folded into that BatchNorm.

    Same value; autograd then keeps no copy of the BatchNorm output for the product (see
    :func:`~darts_core.nn.ops.batch_norm_scaled`). ``pooled``: a cache, for one input ``x``, of the
    outputs of the parameter-free pools before their BatchNorm (every edge reading ``x`` pools it alike).
    """
    if not isinstance(op, EndsInBatchNorm):
        return scale * _run_op(op, x, x_relu)
    if x_relu is not None and isinstance(op, StartsWithReLU):
        return batch_norm_scaled(op.final_bn, op.forward_relu_applied_before_bn(x_relu), scale)
    if pooled is not None and isinstance(op, (MaxPoolBN2d, AvgPoolBN2d)):
        key = (type(op), op.pool.stride)
        if key not in pooled:
            pooled[key] = op.forward_before_bn(x)
        return batch_norm_scaled(op.final_bn, pooled[key], scale)
    return batch_norm_scaled(op.final_bn, op.forward_before_bn(x), scale)


class _ContiguousGradient(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (in the input's memory format).

    The gradient of a node is a channel slice of the gradient of the cell's concatenated output: not
    contiguous. Every folded BatchNorm of the node's edges receives it as is, and in channels_last the CPU
    BatchNorm backward is 7x slower on such a gradient (5.4 ms instead of 0.7 ms at 16 x 16 x 32 x 32):
    one copy per node instead.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.channels_last = x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        if ctx.channels_last:
            return grad.contiguous(memory_format=torch.channels_last)
        return grad.contiguous()


def _contiguous_gradient(x: torch.Tensor) -> torch.Tensor:
    """:class:`_ContiguousGradient` where the memory-saving Functions apply (not for ``torch.func``)."""
    return _ContiguousGradient.apply(x) if recomputes_in_backward(x) else x


def _is_channels_last(x: torch.Tensor) -> bool:
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Channel shuffle (ShuffleNet, PC-DARTS): channel ``g * C / groups + i`` goes to ``i * groups + g``.

    Args:
        x: ``(N, C, H, W)`` with ``C`` divisible by ``groups``.
        groups: number of channel groups.

    Returns:
        ``(N, C, H, W)``, in the memory format of ``x`` (channels_last stays channels_last).
    """
    batch, channels, height, width = x.shape
    if channels % groups:
        raise ValueError(f"groups must divide the {channels} channels of x, got groups={groups}")
    return _interleave(list(x.chunk(groups, dim=1)))


def _interleave(pieces: list[torch.Tensor]) -> torch.Tensor:
    """Channel ``i`` of piece ``g`` becomes channel ``i * len(pieces) + g``: one copy, layout kept.

    ``channel_shuffle(torch.cat(pieces, 1), len(pieces))`` for pieces of equal width, without the
    intermediate concatenation.
    """
    first = pieces[0]
    if first.dim() == 4 and first.stride(1) < first.stride(3):  # channels_last, or a channel slice of one
        # N, H, W, C view of a channels_last tensor: stacking on a new last axis interleaves the
        # channels and keeps the result channels_last.
        stacked = torch.stack([piece.permute(0, 2, 3, 1) for piece in pieces], dim=-1)
        return stacked.flatten(3).permute(0, 3, 1, 2)
    return torch.stack(pieces, dim=2).flatten(1, 2)


def _needs_relu(op: nn.Module) -> bool:
    return isinstance(op, StartsWithReLU)


class MixedOp(nn.Module):
    """The weighted sum of every candidate operation on one edge: ``sum_k weights[k] * op_k(x)``.

    Operations that are :class:`~darts_core.nn.ops.Zero2d` are never computed: they contribute exactly
    zero (their weight still takes part in the softmax done by the caller). Operations that start with
    a ReLU use ``x_relu`` when the caller passes it, so the ReLU of a state is computed once for all
    the edges that read it.

    Args:
        primitives: ordered mapping name -> ``factory(C, stride, affine)``.
        C: channels of the input and output.
        stride: stride of every operation.
        affine: passed to the factories (DARTS searches with ``affine=False``).

    Shape:
        ``x``: ``(N, C, H, W)``; ``weights``: ``(len(primitives),)`` (already softmaxed);
        output: ``(N, C, ceil(H / stride), ceil(W / stride))``.
    """

    def __init__(self, primitives: Mapping[str, PrimitiveFactory], C: int, stride: int, affine: bool = False):
        super().__init__()
        if len(primitives) == 0:
            raise ValueError("primitives must hold at least one operation")
        self.primitive_names = list(primitives)
        self.ops = nn.ModuleList(factory(C, stride, affine) for factory in primitives.values())
        self._computed = [k for k, op in enumerate(self.ops) if not isinstance(op, Zero2d)]
        self.needs_relu = any(_needs_relu(self.ops[k]) for k in self._computed)

    def forward(
        self,
        x: torch.Tensor,
        weights: torch.Tensor,
        x_relu: torch.Tensor | None = None,
        pooled: dict[tuple[type, Any], torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Args:
        x: the input state.
        weights: one weight per primitive, shape ``(len(primitives),)``, already softmaxed.
        x_relu: optional ``relu(x)``, shared with other operations reading ``x``.
        pooled: optional cache of the pools' outputs (before their BatchNorm) for this ``x``, shared
            with the other edges reading ``x``.
        """
        if not self._computed:
            return self.ops[0](x) * weights[0]
        if x_relu is None and self.needs_relu:
            x_relu = F.relu(x)
        per_op = weights.unbind(0)
        out: torch.Tensor | None = None
        for k in self._computed:
            term = _run_op_scaled(self.ops[k], x, x_relu, per_op[k], pooled)
            out = term if out is None else out + term
        assert out is not None  # self._computed is not empty, so the loop ran
        return out

    def forward_sampled(
        self, x: torch.Tensor, weights: torch.Tensor, index: int, x_relu: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``weights[index] * op_index(x)``: only the sampled operation runs (GDAS).

        Shapes as :meth:`forward`; ``index`` in ``range(len(primitives))``.
        """
        if x_relu is None and _needs_relu(self.ops[index]):
            x_relu = F.relu(x)
        return _run_op_scaled(self.ops[index], x, x_relu, weights[index])


def _as_primitives(primitives: Mapping[str, PrimitiveFactory] | Sequence[str]) -> dict[str, PrimitiveFactory]:
    if isinstance(primitives, Mapping):
        result = dict(primitives)
    else:
        unknown = [name for name in primitives if name not in DARTS_PRIMITIVES_2D]
        if isinstance(primitives, str) or unknown:
            raise ValueError(
                f"primitives must be a mapping name -> factory(C, stride, affine) or a list of names among "
                f"{list(DARTS_PRIMITIVES_2D)}; unknown: {unknown if unknown else primitives!r}"
            )
        result = {name: DARTS_PRIMITIVES_2D[name] for name in primitives}
    if not result:
        raise ValueError("primitives must hold at least one operation")
    return result
