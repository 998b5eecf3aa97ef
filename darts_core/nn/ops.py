"""Candidate operations of the DARTS search space (2-D feature maps).

Every operation maps a tensor of shape ``(N, C_in, H, W)`` to ``(N, C_out, H', W')`` with
``H' = ceil(H / stride)`` and ``W' = ceil(W / stride)`` for the padding used by
:data:`DARTS_PRIMITIVES_2D`, so even and odd sizes both work.

Operations that end with a BatchNorm (all but :class:`Identity` and :class:`Zero2d`) derive from
:class:`EndsInBatchNorm`: they expose it as ``final_bn`` and offer ``forward_before_bn(x)``, the output
before that BatchNorm. Those that also start with a ReLU on their input (:class:`ReLUConvBN2d`,
:class:`ReduceChannels2d`, :class:`DilConv2d`, :class:`SepConv2d`) derive from :class:`StartsWithReLU`
and offer ``forward_relu_applied(x_relu)`` and ``forward_relu_applied_before_bn(x_relu)``, which take
``relu(x)`` computed by the caller. A cell computes the ReLU of each state once and hands it to every
such operation that reads the state; ``forward(x)`` still applies the ReLU itself, so each operation
used alone behaves like the DARTS reference. A mixed edge then computes ``w * op(x)`` as
:func:`batch_norm_scaled` ``(op.final_bn, op.forward_before_bn(x), w)``: the same value, but autograd
no longer keeps the BatchNorm output for the product (a quarter of the activations of a search step).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from darts_core.nn.recompute import _DepthwisePointwise, _MaxPool3x3, recomputes_in_backward

__all__ = [
    "EndsInBatchNorm",
    "StartsWithReLU",
    "ReLUConvBN2d",
    "ReduceChannels2d",
    "Identity",
    "Zero2d",
    "DilConv2d",
    "SepConv2d",
    "AvgPoolBN2d",
    "MaxPoolBN2d",
    "PrimitiveFactory",
    "DARTS_PRIMITIVES_2D",
    "batch_norm_scaled",
]

#: A factory building one candidate operation: ``factory(C, stride, affine) -> nn.Module``.
PrimitiveFactory = Callable[[int, int, bool], nn.Module]


def _strided_size(size: int, stride: int) -> int:
    return -(-size // stride)


def batch_norm_scaled(
    bn: nn.modules.batchnorm._BatchNorm, x: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """``scale * bn(x)`` computed as one batch norm whose affine weight (and bias) carry ``scale``.

    Exactly ``scale * bn(x)`` in training and eval mode, and ``bn``'s running statistics and
    ``num_batches_tracked`` are updated as ``bn(x)`` would update them. The product ``scale * bn(x)``
    makes autograd keep the BatchNorm output (for the gradient of ``scale``); here the gradient of the
    affine weight comes from the BatchNorm input it keeps anyway.

    Args:
        bn: the BatchNorm module (affine or not).
        x: its input, ``(N, C, ...)``.
        scale: a 0-d tensor.

    Returns:
        ``(N, C, ...)``, the shape of ``x``.
    """
    bn._check_input_dim(x)
    # The momentum bookkeeping of torch.nn.modules.batchnorm._BatchNorm.forward.
    momentum = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        momentum = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_batch_stats = bn.training or (bn.running_mean is None and bn.running_var is None)
    keep_running = not bn.training or bn.track_running_stats
    channels = x.shape[1]
    # .contiguous(): with the stride-0 expanded weight, whole search steps on CPU (channels_last) drifted
    # from the reference by 1e-4 to 2e-2 in tests/core/test_benchmark_equivalence.py (not reproduced
    # on a lone BatchNorm); a contiguous copy of C floats restores agreement and costs nothing.
    weight = scale.expand(channels).contiguous() if bn.weight is None else scale * bn.weight
    bias = None if bn.bias is None else scale * bn.bias
    return F.batch_norm(
        x,
        bn.running_mean if keep_running else None,
        bn.running_var if keep_running else None,
        weight,
        bias,
        use_batch_stats,
        momentum,
        bn.eps,
    )


class EndsInBatchNorm(nn.Module):
    """Base of the operations whose output is that of a final BatchNorm2d.

    Subclasses define :attr:`final_bn` and :meth:`forward_before_bn`; then
    ``forward(x) == final_bn(forward_before_bn(x))``, and a mixed edge can fold its weight into that
    BatchNorm (:func:`batch_norm_scaled`).
    """

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        """The operation's last layer."""
        raise NotImplementedError

    def forward_before_bn(self, x: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn` for the operation's input ``x``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_bn(self.forward_before_bn(x))


class StartsWithReLU(EndsInBatchNorm):
    """Base of the operations ``ReLU -> ... -> BatchNorm2d``.

    Subclasses define :attr:`final_bn` and :meth:`forward_relu_applied_before_bn`; the other forms
    follow: :meth:`forward_relu_applied` takes ``relu(x)`` computed by the caller (a cell shares one
    ReLU per state), ``forward(x)`` applies the ReLU itself.
    """

    def forward_relu_applied_before_bn(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn` for an input on which ``relu`` was already applied."""
        raise NotImplementedError

    def forward_before_bn(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_relu_applied_before_bn(F.relu(x))

    def forward_relu_applied(self, x_relu: torch.Tensor) -> torch.Tensor:
        """Same as :meth:`forward` for an input on which ``relu`` was already applied."""
        return self.final_bn(self.forward_relu_applied_before_bn(x_relu))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_relu_applied(F.relu(x))


class ReLUConvBN2d(StartsWithReLU):
    """ReLU -> Conv2d (no bias) -> BatchNorm2d.

    Args:
        C_in: input channels.
        C_out: output channels.
        kernel_size: convolution kernel size.
        stride: convolution stride.
        padding: zero padding of the convolution.
        affine: whether the batch norm has a learnable scale and shift.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)`` with the usual Conv2d output size.
    """

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ):
        super().__init__()
        self.conv = nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def forward_relu_applied_before_bn(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn` for an input on which ``relu`` was already applied."""
        return self.conv(x_relu)



class ReduceChannels2d(StartsWithReLU):
    """Factorized reduction: halves H and W (rounding up) and maps ``C_in`` to ``C_out`` channels.

    ReLU, then two 1x1 stride-2 convolutions, the second one on the input shifted by one pixel (zero
    padded at the far border so odd sizes work), concatenated on channels, then BatchNorm2d. The first
    convolution produces ``C_out // 2`` channels and the second the rest, so ``C_out`` may be odd.

    Each stride-2 1x1 convolution is computed as a subsampling followed by a stride-1 1x1 convolution
    (the same arithmetic, on a quarter of the pixels). Besides being cheaper, this keeps clear of
    oneDNN's channels_last backward of strided 1x1 convolutions with fewer than 8 channels, which
    corrupts the heap on one thread with torch 2.13 on AVX2 CPUs (tests/core/test_ops.py reproduces
    the configuration).

    Args:
        C_in: input channels.
        C_out: output channels (at least 2).
        affine: whether the batch norm has a learnable scale and shift.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, ceil(H / 2), ceil(W / 2))``
    """

    def __init__(self, C_in: int, C_out: int, affine: bool = True):
        super().__init__()
        if C_out < 2:
            raise ValueError(f"ReduceChannels2d needs C_out >= 2 (two convolution halves), got C_out={C_out}")
        self.conv_1 = nn.Conv2d(C_in, C_out // 2, 1, bias=False)
        self.conv_2 = nn.Conv2d(C_in, C_out - C_out // 2, 1, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def forward_relu_applied_before_bn(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn` for an input on which ``relu`` was already applied."""
        # The stride-2 samples of the input and of the input shifted by one pixel. The shifted half is
        # zero padded at the far border: for even sizes the pad is never sampled (the reference's
        # result), for odd sizes both halves then have ceil(H / 2) rows.
        even = x_relu[:, :, ::2, ::2]
        odd = x_relu[:, :, 1::2, 1::2]
        odd = F.pad(odd, (0, even.shape[-1] - odd.shape[-1], 0, even.shape[-2] - odd.shape[-2]))
        return torch.cat([self.conv_1(even), self.conv_2(odd)], dim=1)


class Identity(nn.Module):
    """Identity module: returns its input unchanged (any shape)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Zero2d(nn.Module):
    """Zeros of the strided shape: ``(N, C, H, W) -> (N, C, ceil(H / stride), ceil(W / stride))``.

    The output is made with ``torch.zeros`` (same dtype and device as the input), never computed from
    the input, so infinities or NaN in the input still give zeros. For ``stride == 1`` any input shape
    is accepted; for larger strides the last two dimensions are subsampled.

    Args:
        stride: subsampling factor of the last two dimensions.
    """

    def __init__(self, stride: int):
        super().__init__()
        if stride < 1:
            raise ValueError(f"Zero2d stride must be >= 1, got stride={stride}")
        self.stride = stride

    def output_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """The output shape for an input of the given shape."""
        if self.stride == 1:
            return tuple(shape)
        if len(shape) < 2:
            raise ValueError(
                f"Zero2d with stride {self.stride} needs at least 2 dimensions, got shape {shape}"
            )
        *lead, h, w = shape
        return (*lead, _strided_size(h, self.stride), _strided_size(w, self.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(self.output_shape(x.shape))

    def extra_repr(self) -> str:
        return f"stride={self.stride}"


class DilConv2d(StartsWithReLU):
    """ReLU -> depthwise dilated conv (groups = C_in) -> 1x1 conv -> BatchNorm2d.

    Args:
        C_in: input channels.
        C_out: output channels.
        kernel_size: kernel size of the depthwise convolution.
        stride: stride of the depthwise convolution.
        padding: zero padding of the depthwise convolution.
        dilation: dilation of the depthwise convolution.
        affine: whether the batch norm has a learnable scale and shift.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``; with ``padding = dilation * (kernel_size - 1) / 2``
        ``H_out = ceil(H / stride)``.
    """

    def __init__(
        self,
        C_in: int,
        C_out: int,
        kernel_size: int,
        stride: int,
        padding: int,
        dilation: int,
        affine: bool = True,
    ):
        super().__init__()
        self.depthwise = nn.Conv2d(
            C_in,
            C_in,
            kernel_size,
            stride=stride,
            padding=padding,
            dilation=dilation,
            groups=C_in,
            bias=False,
        )
        self.pointwise = nn.Conv2d(C_in, C_out, 1, padding=0, bias=False)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def forward_relu_applied_before_bn(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn` for an input on which ``relu`` was already applied."""
        if not recomputes_in_backward(x_relu):
            return self.pointwise(self.depthwise(x_relu))
        # Recompute the depthwise output in backward rather than keep it (see _DepthwisePointwise).
        return _DepthwisePointwise.apply(x_relu, self.depthwise.weight, self.pointwise.weight, self.depthwise)



class SepConv2d(StartsWithReLU):
    """Separable convolution: the :class:`DilConv2d` block twice with dilation 1.

    The first block is strided and keeps ``C_in`` channels; the second has stride 1 and maps to
    ``C_out`` channels.

    Args:
        C_in: input channels.
        C_out: output channels.
        kernel_size: kernel size of both depthwise convolutions.
        stride: stride of the first depthwise convolution.
        padding: zero padding of both depthwise convolutions.
        affine: whether the batch norms have a learnable scale and shift.

    Shape:
        ``(N, C_in, H, W) -> (N, C_out, H_out, W_out)``; with ``padding = (kernel_size - 1) / 2``
        ``H_out = ceil(H / stride)``.
    """

    def __init__(
        self, C_in: int, C_out: int, kernel_size: int, stride: int, padding: int, affine: bool = True
    ):
        super().__init__()
        self.first = DilConv2d(C_in, C_in, kernel_size, stride, padding, dilation=1, affine=affine)
        self.second = DilConv2d(C_in, C_out, kernel_size, 1, padding, dilation=1, affine=affine)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.second.bn

    def forward_relu_applied_before_bn(self, x_relu: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn` for an input on which ``relu`` was already applied."""
        return self.second.forward_before_bn(self.first.forward_relu_applied(x_relu))



class AvgPoolBN2d(EndsInBatchNorm):
    """3x3 average pooling (padding 1, ``count_include_pad=False``) -> BatchNorm2d(C, affine=False).

    Shape:
        ``(N, C, H, W) -> (N, C, ceil(H / stride), ceil(W / stride))``
    """

    def __init__(self, C: int, stride: int):
        super().__init__()
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1, count_include_pad=False)
        self.bn = nn.BatchNorm2d(C, affine=False)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def forward_before_bn(self, x: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn`."""
        return self.pool(x)


class MaxPoolBN2d(EndsInBatchNorm):
    """3x3 max pooling (padding 1) -> BatchNorm2d(C, affine=False).

    Shape:
        ``(N, C, H, W) -> (N, C, ceil(H / stride), ceil(W / stride))``
    """

    def __init__(self, C: int, stride: int):
        super().__init__()
        self.pool = nn.MaxPool2d(3, stride=stride, padding=1)
        self.bn = nn.BatchNorm2d(C, affine=False)

    @property
    def final_bn(self) -> nn.BatchNorm2d:
        return self.bn

    def forward_before_bn(self, x: torch.Tensor) -> torch.Tensor:
        """The input of :attr:`final_bn`."""
        if x.dim() != 4 or not recomputes_in_backward(x):
            return self.pool(x)
        # Recompute the argmax indices in backward rather than keep them (see _MaxPool3x3).
        return _MaxPool3x3.apply(x, self.pool.stride)



def _skip_connect(C: int, stride: int, affine: bool) -> nn.Module:
    return Identity() if stride == 1 else ReduceChannels2d(C, C, affine=affine)


#: The eight DARTS operations in the DARTS order: name -> ``factory(C, stride, affine)``.
#: Each built operation maps ``(N, C, H, W)`` to ``(N, C, ceil(H / stride), ceil(W / stride))``.
DARTS_PRIMITIVES_2D: OrderedDict[str, PrimitiveFactory] = OrderedDict(
    [
        ("none", lambda C, stride, affine: Zero2d(stride)),
        ("max_pool_3x3", lambda C, stride, affine: MaxPoolBN2d(C, stride)),
        ("avg_pool_3x3", lambda C, stride, affine: AvgPoolBN2d(C, stride)),
        ("skip_connect", _skip_connect),
        ("sep_conv_3x3", lambda C, stride, affine: SepConv2d(C, C, 3, stride, 1, affine=affine)),
        ("sep_conv_5x5", lambda C, stride, affine: SepConv2d(C, C, 5, stride, 2, affine=affine)),
        ("dil_conv_3x3", lambda C, stride, affine: DilConv2d(C, C, 3, stride, 2, 2, affine=affine)),
        ("dil_conv_5x5", lambda C, stride, affine: DilConv2d(C, C, 5, stride, 4, 2, affine=affine)),
    ]
)
