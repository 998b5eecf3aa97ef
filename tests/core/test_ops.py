"""darts_core.nn.ops: shapes, parameter counts, semantics and gradients of the DARTS primitives."""

import copy
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import darts_core as arch
from darts_core.nn import ops
from darts_core.nn.ops import AvgPoolBN2d, MaxPoolBN2d, batch_norm_scaled

DARTS_ORDER = [
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
]


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One intra-op thread: these graphs are tiny, and on a busy 2-core machine a second thread makes
    # them an order of magnitude slower (threads spin waiting for each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def test_primitives_hold_the_eight_darts_operations_in_order():
    assert list(arch.DARTS_PRIMITIVES_2D) == DARTS_ORDER


@pytest.mark.parametrize("name", DARTS_ORDER)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_primitive_shapes_for_even_and_odd_sizes(name, stride, size):
    op = arch.DARTS_PRIMITIVES_2D[name](5, stride, False)
    x = torch.randn(2, 5, *size)
    y = op(x)
    assert y.shape == (2, 5, math.ceil(size[0] / stride), math.ceil(size[1] / stride))
    assert y.dtype == x.dtype


def test_primitive_types_and_affine():
    p = arch.DARTS_PRIMITIVES_2D
    assert isinstance(p["none"](4, 2, True), arch.Zero2d)
    assert isinstance(p["skip_connect"](4, 1, True), arch.Identity)
    reduce = p["skip_connect"](4, 2, True)
    assert isinstance(reduce, arch.ReduceChannels2d) and reduce.bn.affine
    assert not p["skip_connect"](4, 2, False).bn.affine
    assert isinstance(p["sep_conv_5x5"](4, 1, True), arch.SepConv2d)
    dil5 = p["dil_conv_5x5"](4, 1, True)
    assert isinstance(dil5, arch.DilConv2d)
    assert dil5.depthwise.kernel_size == (5, 5) and dil5.depthwise.dilation == (2, 2)
    assert dil5.depthwise.padding == (4, 4)
    # Pools are followed by a non-affine BN whatever `affine` says.
    for name, pool_type in [("max_pool_3x3", nn.MaxPool2d), ("avg_pool_3x3", nn.AvgPool2d)]:
        op = p[name](4, 2, True)
        assert isinstance(op.pool, pool_type)
        assert isinstance(op.bn, nn.BatchNorm2d) and not op.bn.affine and op.bn.num_features == 4
        assert n_params(op) == 0


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("none", 0),
        ("max_pool_3x3", 0),
        ("avg_pool_3x3", 0),
        ("skip_connect", 0),
        # depthwise 3x3 (C*9) + pointwise (C*C) + BN (2C), twice
        ("sep_conv_3x3", 2 * (4 * 9 + 4 * 4 + 8)),
        ("sep_conv_5x5", 2 * (4 * 25 + 4 * 4 + 8)),
        ("dil_conv_3x3", 4 * 9 + 4 * 4 + 8),
        ("dil_conv_5x5", 4 * 25 + 4 * 4 + 8),
    ],
)
def test_primitive_parameter_counts_stride_1_affine(name, expected):
    assert n_params(arch.DARTS_PRIMITIVES_2D[name](4, 1, True)) == expected


def test_parameter_counts_of_each_class():
    assert n_params(arch.ReLUConvBN2d(3, 5, 3, 1, 1, affine=True)) == 3 * 5 * 9 + 2 * 5
    assert n_params(arch.ReLUConvBN2d(3, 5, 3, 1, 1, affine=False)) == 3 * 5 * 9
    # two 1x1 convolutions of C_out // 2 and C_out - C_out // 2 channels, BN
    assert n_params(arch.ReduceChannels2d(4, 5)) == 4 * 2 + 4 * 3 + 2 * 5
    assert n_params(arch.ReduceChannels2d(4, 5, affine=False)) == 4 * 2 + 4 * 3
    assert n_params(arch.DilConv2d(4, 6, 3, 1, 2, 2)) == 4 * 9 + 4 * 6 + 2 * 6
    # first block keeps C_in channels, second maps to C_out
    assert n_params(arch.SepConv2d(4, 6, 3, 1, 1)) == (4 * 9 + 4 * 4 + 8) + (4 * 9 + 4 * 6 + 12)
    assert n_params(arch.Identity()) == 0
    assert n_params(arch.Zero2d(2)) == 0


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("size", [8, 7])
def test_class_shapes_with_channel_change(stride, size):
    x = torch.randn(2, 3, size, size)
    out = math.ceil(size / stride)
    assert arch.ReLUConvBN2d(3, 5, 3, stride, 1)(x).shape == (2, 5, out, out)
    assert arch.DilConv2d(3, 5, 3, stride, 2, 2)(x).shape == (2, 5, out, out)
    assert arch.SepConv2d(3, 5, 5, stride, 2)(x).shape == (2, 5, out, out)
    assert arch.Zero2d(stride)(x).shape == (2, 3, out, out)
    assert arch.Identity()(x) is x


@pytest.mark.parametrize("size", [(8, 8), (7, 7), (5, 8), (1, 1)])
@pytest.mark.parametrize("c_out", [4, 5, 2])
def test_reduce_channels_halves_size_rounding_up(size, c_out):
    x = torch.randn(2, 3, *size)
    y = arch.ReduceChannels2d(3, c_out)(x)
    assert y.shape == (2, c_out, math.ceil(size[0] / 2), math.ceil(size[1] / 2))


def test_reduce_channels_matches_the_reference_on_even_sizes():
    op = arch.ReduceChannels2d(3, 6).double()
    x = torch.randn(2, 3, 8, 6, dtype=torch.float64)
    r = F.relu(x)
    # reference: two 1x1 stride-2 convolutions, the second on the input shifted by one pixel
    def strided(conv: nn.Conv2d, z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, conv.weight, stride=2)

    expected = op.bn(torch.cat([strided(op.conv_1, r), strided(op.conv_2, r[:, :, 1:, 1:])], dim=1))
    torch.testing.assert_close(op(x), expected, rtol=0, atol=1e-12)
    assert op.conv_1.kernel_size == (1, 1) and op.conv_2.kernel_size == (1, 1)


_FEW_CHANNELS_BACKWARD = """
import torch
torch.set_num_threads(1)
import darts_core as arch
op = arch.ReduceChannels2d(4, 4).to(memory_format=torch.channels_last)
for _ in range(50):
    x = torch.randn(8, 4, 8, 8).to(memory_format=torch.channels_last).requires_grad_()
    torch.autograd.grad(op(x).square().sum(), [x, *op.parameters()])
print("ok")
"""


def test_reduce_channels_backward_with_few_channels_in_channels_last_on_one_thread():
    # oneDNN's strided 1x1 convolution corrupted the heap here (torch 2.13, AVX2): the process died.
    done = subprocess.run(
        [sys.executable, "-c", _FEW_CHANNELS_BACKWARD],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_reduce_channels_rejects_fewer_than_two_output_channels():
    with pytest.raises(ValueError, match="C_out >= 2"):
        arch.ReduceChannels2d(3, 1)


def test_relu_conv_bn_is_relu_then_conv_then_bn():
    op = arch.ReLUConvBN2d(3, 4, 3, 2, 1).double()
    x = torch.randn(2, 3, 7, 7, dtype=torch.float64)
    assert op.conv.bias is None
    torch.testing.assert_close(op(x), op.bn(op.conv(F.relu(x))), rtol=0, atol=0)


def test_dil_conv_is_depthwise_dilated_then_pointwise():
    op = arch.DilConv2d(4, 6, 3, 2, 2, 2)
    assert op.depthwise.groups == 4 and op.depthwise.dilation == (2, 2) and op.depthwise.stride == (2, 2)
    assert op.pointwise.kernel_size == (1, 1) and op.pointwise.out_channels == 6
    x = torch.randn(2, 4, 9, 9)
    torch.testing.assert_close(op(x), op.bn(op.pointwise(op.depthwise(F.relu(x)))))


def test_sep_conv_strides_only_the_first_block_which_keeps_input_channels():
    op = arch.SepConv2d(4, 6, 3, 2, 1)
    assert op.first.depthwise.stride == (2, 2) and op.first.pointwise.out_channels == 4
    assert op.second.depthwise.stride == (1, 1) and op.second.pointwise.out_channels == 6
    assert op.first.depthwise.dilation == (1, 1) and op.second.depthwise.dilation == (1, 1)
    x = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(op(x), op.second(op.first(x)))


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_zero_gives_exact_zeros_even_for_inf_and_nan(stride):
    x = torch.randn(2, 3, 7, 8, dtype=torch.float64)
    x[0, 0, 0, 0] = float("inf")
    x[1, 2, 3, 3] = float("nan")
    y = arch.Zero2d(stride)(x)
    assert y.shape == (2, 3, math.ceil(7 / stride), math.ceil(8 / stride))
    assert y.dtype == torch.float64
    assert torch.equal(y, torch.zeros_like(y))


def test_zero_rejects_bad_stride_and_strided_1d_input():
    with pytest.raises(ValueError, match="stride must be >= 1"):
        arch.Zero2d(0)
    assert arch.Zero2d(1)(torch.ones(3)).shape == (3,)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        arch.Zero2d(2)(torch.ones(3))


def test_avg_pool_does_not_count_padding():
    op = AvgPoolBN2d(2, 1).eval()  # fresh running stats: BN divides by sqrt(1 + eps)
    y = op(torch.full((1, 2, 5, 5), 3.0))
    # with count_include_pad=True the corners would be 3 * 4 / 9
    torch.testing.assert_close(y, torch.full_like(y, 3.0 / math.sqrt(1 + op.bn.eps)))


def test_max_pool_then_bn():
    op = MaxPoolBN2d(1, 2).eval()
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    expected = F.max_pool2d(x, 3, 2, 1) / math.sqrt(1 + op.bn.eps)
    torch.testing.assert_close(op(x), expected)


@pytest.mark.parametrize(
    "op",
    [
        arch.ReLUConvBN2d(4, 4, 3, 1, 1),
        arch.ReduceChannels2d(4, 4),
        arch.DilConv2d(4, 4, 3, 2, 2, 2),
        arch.SepConv2d(4, 4, 5, 1, 2),
    ],
    ids=lambda op: type(op).__name__,
)
def test_forward_relu_applied_matches_forward(op):
    assert isinstance(op, ops.StartsWithReLU)
    x = torch.randn(2, 4, 7, 7)
    torch.testing.assert_close(op.forward_relu_applied(F.relu(x)), op(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "name", ["skip_connect", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"]
)
def test_gradient_reaches_every_parameter_and_the_input(name):
    op = arch.DARTS_PRIMITIVES_2D[name](4, 2, True)
    x = torch.randn(3, 4, 7, 7, requires_grad=True)
    # a random projection: the sum of a batch-normalised output has no gradient
    loss = (op(x) * torch.randn(3, 4, 4, 4)).sum()
    loss.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    for pname, p in op.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def test_ops_do_not_modify_their_input():
    x = torch.randn(2, 4, 6, 6)
    before = x.clone()
    for factory in arch.DARTS_PRIMITIVES_2D.values():
        factory(4, 1, False)(x)
    assert torch.equal(x, before)


@pytest.mark.parametrize("name", DARTS_ORDER[1:])
def test_final_bn_of_forward_before_bn_is_forward(name):
    op = arch.DARTS_PRIMITIVES_2D[name](4, 2, False)
    x = torch.randn(2, 4, 7, 7)
    assert isinstance(op, ops.EndsInBatchNorm), f"{name} with stride 2 should end with a BatchNorm"
    torch.testing.assert_close(op.final_bn(op.forward_before_bn(x)), op(x), rtol=0, atol=0)
    if isinstance(op, ops.StartsWithReLU):
        before = op.forward_relu_applied_before_bn(F.relu(x))
        torch.testing.assert_close(op.final_bn(before), op(x), rtol=0, atol=0)


@pytest.mark.parametrize("affine", [False, True])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("channels_last", [False, True])
def test_batch_norm_scaled_is_scale_times_bn(affine, momentum, channels_last):
    """Same output, gradients and running statistics as ``scale * bn(x)``, in training then eval mode."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    bn = nn.BatchNorm2d(5, affine=affine, momentum=momentum).double()
    if affine:
        with torch.no_grad():
            bn.weight.normal_()
            bn.bias.normal_()
    twin = copy.deepcopy(bn)
    alphas = torch.randn(3, dtype=torch.float64, requires_grad=True)
    scale = F.softmax(alphas, dim=0).unbind(0)[1]  # a view into a larger tensor, as in MixedOp
    for training in (True, True, False):
        bn.train(training)
        twin.train(training)
        x = (3 * torch.randn(4, 5, 6, 6, dtype=torch.float64) + 1).contiguous(memory_format=fmt)
        x.requires_grad_(True)
        projection = torch.randn(4, 5, 6, 6, dtype=torch.float64)
        out = batch_norm_scaled(bn, x, scale)
        want = scale * twin(x)
        torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
        inputs = [x, alphas, *bn.parameters()]
        got_grads = torch.autograd.grad((out * projection).sum(), inputs, retain_graph=True)
        want_grads = torch.autograd.grad(
            (want * projection).sum(), [x, alphas, *twin.parameters()], retain_graph=True
        )
        for got, expected in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
        for got, expected in zip(bn.buffers(), twin.buffers(), strict=True):
            torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_batch_norm_scaled_without_running_statistics():
    bn = nn.BatchNorm2d(3, affine=False, track_running_stats=False)
    x = torch.randn(2, 3, 4, 4)
    scale = torch.tensor(0.4)
    torch.testing.assert_close(batch_norm_scaled(bn, x, scale), scale * bn(x))
    bn.eval()  # no running statistics: batch statistics in eval mode too
    torch.testing.assert_close(batch_norm_scaled(bn, x, scale), scale * bn(x))


def _plain_dil_conv(op: arch.DilConv2d, x: torch.Tensor) -> torch.Tensor:
    return op.bn(op.pointwise(op.depthwise(F.relu(x))))


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("frozen_weights", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_dil_conv_recomputing_the_depthwise_output_gives_the_same_gradients(
    channels_last, frozen_weights, stride
):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    op = arch.DilConv2d(4, 6, 3, stride, 2, 2).double().to(memory_format=fmt)
    op.requires_grad_(not frozen_weights)
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64).contiguous(memory_format=fmt).requires_grad_(True)
    projection = torch.randn_like(_plain_dil_conv(op, x))
    inputs = [x, *(p for p in op.parameters() if p.requires_grad)]
    out = op(x)
    want = _plain_dil_conv(op, x)
    torch.testing.assert_close(out, want, rtol=0, atol=1e-12)
    got_grads = torch.autograd.grad((out * projection).sum(), inputs)
    want_grads = torch.autograd.grad((want * projection).sum(), inputs)
    for got, expected in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)


def test_dil_conv_keeps_no_depthwise_output_for_backward():
    op = arch.DilConv2d(4, 4, 3, 1, 2, 2, affine=False)
    x_relu = F.relu(torch.randn(2, 4, 8, 8, requires_grad=True))
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        op.forward_relu_applied_before_bn(x_relu)
    parameters = {p.data_ptr() for p in op.parameters()}
    activations = [t for t in saved if t.data_ptr() not in parameters]
    assert [t.data_ptr() for t in activations] == [x_relu.data_ptr()]  # its input only, shared by edges


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_recomputing_its_indices_gives_the_native_gradient(channels_last, stride):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    op = MaxPoolBN2d(4, stride)
    x = torch.randn(2, 4, 7, 7).contiguous(memory_format=fmt)
    x[0, 0, :3, :3] = 1.0  # ties: the gradient goes to the same (first) maximum as the native kernel's
    x.requires_grad_(True)
    out = op.forward_before_bn(x)
    want = F.max_pool2d(x, 3, stride, 1)
    assert torch.equal(out, want)
    projection = torch.randn_like(want)
    (got_grad,) = torch.autograd.grad((out * projection).sum(), [x])
    (want_grad,) = torch.autograd.grad((want * projection).sum(), [x])
    assert torch.equal(got_grad, want_grad)
    saved: list[torch.Tensor] = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        op.forward_before_bn(x)
    assert [t.dtype for t in saved] == [torch.float32]  # the input only, no int64 indices
