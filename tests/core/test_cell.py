"""darts_core.nn.cell: MixedOp, Cell, default_cell_output and SpecialParameter."""

import copy
import functools
import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

import darts_core as arch
from darts_core.nn.mixed_op import MixedOp

PRIMS = arch.DARTS_PRIMITIVES_2D


@pytest.fixture(autouse=True)
def _seed_and_one_thread():
    # One intra-op thread: these graphs are tiny, and on a busy 2-core machine a second thread makes
    # them an order of magnitude slower (threads spin waiting for each other).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


def make_cell(is_reduction=False, is_reduction_prev=False, c=4, cpp=6, cp=5, **kwargs):
    return arch.Cell(PRIMS, cpp, cp, c, is_reduction, is_reduction_prev, **kwargs)


def parents_for(cell: arch.Cell, size: int, batch: int = 2, dtype=torch.float32):
    size0 = 2 * size if cell.is_reduction_prev else size
    cpp = (
        cell.preprocess0.conv.in_channels
        if hasattr(cell.preprocess0, "conv")
        else cell.preprocess0.conv_1.in_channels
    )
    cp = cell.preprocess1.conv.in_channels
    return [
        torch.randn(batch, cpp, size0, size0, dtype=dtype),
        torch.randn(batch, cp, size, size, dtype=dtype),
    ]


def naive_op(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The reference computation: every op with its own ReLU; `none` as x * 0 (strided)."""
    if isinstance(op, arch.Zero2d):
        return x[:, :, :: op.stride, :: op.stride].mul(0.0)
    return op(x)


def naive_mixed(mixed: MixedOp, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return sum(w_k * naive_op(op, x) for w_k, op in zip(w, mixed.ops, strict=True))


def naive_cell(cell: arch.Cell, parents, alphas=None) -> torch.Tensor:
    states = [cell.preprocess0(parents[0]), cell.preprocess1(parents[1])]
    w = F.softmax(cell.weights if alphas is None else alphas, dim=-1)
    edge = 0
    for node in range(cell.internal_nodes):
        states.append(
            sum(naive_mixed(cell.mixed_ops[edge + j], h, w[edge + j]) for j, h in enumerate(states))
        )
        edge += 2 + node
    return torch.cat(states[-cell.internal_nodes :], dim=1)


class CountReLU(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in (F.relu, torch.relu):
            self.calls += 1
        return func(*args, **(kwargs or {}))


# ---------------------------------------------------------------- shapes and structure


@pytest.mark.parametrize("size", [8, 7])
@pytest.mark.parametrize(
    ("is_reduction", "is_reduction_prev"), [(False, False), (True, False), (False, True), (True, True)]
)
def test_cell_output_shape(size, is_reduction, is_reduction_prev):
    cell = make_cell(is_reduction, is_reduction_prev)
    parents = parents_for(cell, size)
    if is_reduction_prev and size == 7:
        parents[0] = torch.randn(2, 6, 13, 13)  # an odd map reduced to 7 by the previous cell
    out = cell(parents)
    expected = (size + 1) // 2 if is_reduction else size
    assert out.shape == (2, 16, expected, expected)
    assert cell.out_channels == 16 and cell.num_edges == 14


def test_preprocessing_modules():
    cell = make_cell(is_reduction_prev=True)
    assert isinstance(cell.preprocess0, arch.ReduceChannels2d)
    assert isinstance(cell.preprocess1, arch.ReLUConvBN2d)
    cell = make_cell()
    assert isinstance(cell.preprocess0, arch.ReLUConvBN2d) and cell.preprocess0.conv.kernel_size == (1, 1)
    assert cell.preprocess0.conv.in_channels == 6 and cell.preprocess1.conv.in_channels == 5
    assert not cell.preprocess0.bn.affine  # search cells use non-affine BN everywhere
    cell = make_cell(c=4, cpp=4, cp=4, with_preprocessing=False)
    assert isinstance(cell.preprocess0, arch.Identity) and isinstance(cell.preprocess1, arch.Identity)


def test_edges_from_inputs_are_strided_in_reduction_cells():
    cell = make_cell(is_reduction=True)
    strides = [m.ops[0].stride for m in cell.mixed_ops]  # ops[0] is `none`, a Zero2d
    # node 0: edges 0,1; node 1: 2,3,4; node 2: 5..8; node 3: 9..13; inputs are the first two of each node
    assert strides == [2, 2, 2, 2, 1, 2, 2, 1, 1, 2, 2, 1, 1, 1]
    assert all(not m.ops[k].bn.affine for m in cell.mixed_ops for k in (1, 2))


def test_weights_are_a_small_registered_special_parameter():
    cell = make_cell()
    w = cell.get_weights()
    assert isinstance(w, arch.SpecialParameter) and isinstance(w, nn.Parameter)
    assert w.shape == (14, 8) and w.requires_grad
    assert 0 < w.abs().max() < 1e-2
    assert any(p is w for p in cell.parameters())
    specials = [p for p in cell.parameters() if isinstance(p, arch.SpecialParameter)]
    assert len(specials) == 1


def test_parameter_count_of_a_search_cell():
    c = 4
    # per edge at stride 1: sep3 2*(9c+c*c) + sep5 2*(25c+c*c) + dil3 (9c+c*c) + dil5 (25c+c*c); no affine BN
    per_edge = 2 * (9 * c + c * c) + 2 * (25 * c + c * c) + (9 * c + c * c) + (25 * c + c * c)
    preprocess = 6 * c + 5 * c
    cell = make_cell(c=c)
    assert sum(p.numel() for p in cell.parameters()) == 14 * per_edge + preprocess + 14 * 8


@pytest.mark.parametrize("internal_nodes", [2, 3, 5])
@pytest.mark.parametrize("is_reduction", [True, False])
def test_other_numbers_of_internal_nodes(internal_nodes, is_reduction):
    cell = make_cell(is_reduction, internal_nodes=internal_nodes)
    edges = internal_nodes * (internal_nodes + 3) // 2
    assert cell.num_edges == edges and cell.get_weights().shape == (edges, 8)
    assert cell.out_channels == 4 * internal_nodes
    out = cell(parents_for(cell, 7))
    size = 4 if is_reduction else 7
    assert out.shape == (2, 4 * internal_nodes, size, size)
    assert len(cell.get_genotype()) == edges


def test_custom_merge_functions():
    cell = make_cell(cell_merge_output_fn=functools.partial(arch.default_cell_output, nb_outputs_to_use=2))
    assert cell.out_channels == 8
    assert cell(parents_for(cell, 6)).shape == (2, 8, 6, 6)
    cell = make_cell(cell_merge_output_fn=lambda states: states[-1])
    assert cell.out_channels is None
    assert cell(parents_for(cell, 6)).shape == (2, 4, 6, 6)


def test_default_cell_output():
    states = [torch.full((1, 2, 3, 3), float(i)) for i in range(6)]
    out = arch.default_cell_output(states)
    assert out.shape == (1, 8, 3, 3)
    assert out[0, :, 0, 0].tolist() == [2, 2, 3, 3, 4, 4, 5, 5]
    assert arch.default_cell_output(states, nb_outputs_to_use=1).shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match="between 1 and the number of states"):
        arch.default_cell_output(states, nb_outputs_to_use=7)


def test_primitives_given_as_names():
    cell = arch.Cell(["none", "skip_connect", "sep_conv_3x3"], 4, 4, 4, False, False)
    assert cell.primitive_names == ["none", "skip_connect", "sep_conv_3x3"]
    assert cell.get_weights().shape == (14, 3)
    with pytest.raises(ValueError, match="unknown"):
        arch.Cell(["none", "conv_7x7"], 4, 4, 4, False, False)


# ---------------------------------------------------------------- same math as the reference


@pytest.mark.parametrize(
    ("is_reduction", "is_reduction_prev"), [(False, False), (True, False), (False, True)]
)
def test_cell_matches_the_naive_formula_in_float64(is_reduction, is_reduction_prev):
    cell = make_cell(is_reduction, is_reduction_prev).double()
    with torch.no_grad():
        cell.weights.normal_()  # far from uniform so every op's weight matters
    parents = parents_for(cell, 7, dtype=torch.float64)
    params = list(cell.parameters())
    out = cell(parents)
    projection = torch.randn_like(out)
    grads = torch.autograd.grad((out * projection).sum(), params)
    ref = naive_cell(cell, parents)
    ref_grads = torch.autograd.grad((ref * projection).sum(), params)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-6)
    assert grads[params.index(cell.weights)].abs().min() > 0  # every alpha gets a gradient, `none` too


def test_cell_matches_the_naive_formula_in_float32():
    cell = make_cell(True, False)
    parents = parents_for(cell, 6)
    out = cell(parents)
    (g,) = torch.autograd.grad(out.square().sum(), [cell.weights])
    ref = naive_cell(cell, parents)
    (rg,) = torch.autograd.grad(ref.square().sum(), [cell.weights])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g, rg, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_mixed_op_matches_the_naive_formula(stride):
    mixed = MixedOp(PRIMS, 4, stride).double()
    x = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    alphas = torch.randn(8, dtype=torch.float64, requires_grad=True)
    w = F.softmax(alphas, dim=-1)
    out = mixed(x, w)
    assert out.shape == (2, 4, 4 if stride == 2 else 7, 4 if stride == 2 else 7)
    ref = naive_mixed(mixed, x, w)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)
    proj = torch.randn_like(out)
    g = torch.autograd.grad((out * proj).sum(), [x, alphas, *mixed.parameters()], retain_graph=True)
    rg = torch.autograd.grad((ref * proj).sum(), [x, alphas, *mixed.parameters()])
    for a, b in zip(g, rg, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    # with a shared relu(x) passed in, same result
    torch.testing.assert_close(mixed(x, w, F.relu(x)), out, rtol=0, atol=0)


def test_mixed_op_never_computes_none():
    mixed = MixedOp(PRIMS, 4, 1)
    calls = []
    mixed.ops[0].register_forward_hook(lambda *args: calls.append(1))
    mixed(torch.randn(2, 4, 5, 5), F.softmax(torch.randn(8), dim=-1))
    assert calls == []
    # only `none`: zeros of the strided shape
    only_none = MixedOp({"none": PRIMS["none"]}, 4, 2)
    assert torch.equal(only_none(torch.randn(2, 4, 5, 5), torch.ones(1)), torch.zeros(2, 4, 3, 3))


def test_relu_of_each_state_is_computed_once():
    cell = make_cell()
    with CountReLU() as counter:
        cell(parents_for(cell, 6))
    # 2 preprocessing ReLUs + one per state read by an edge (s0, s1, nodes 0..2)
    # + the inner ReLU of the second block of 2 separable convolutions on each of the 14 edges.
    # The reference would compute 2 + 14 * 4 + 14 * 2 = 86.
    assert counter.calls == 2 + 5 + 14 * 2


def test_cell_does_not_modify_its_inputs():
    cell = make_cell(with_preprocessing=False, cpp=4, cp=4)
    parents = [torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)]
    before = [p.clone() for p in parents]
    cell(parents)
    assert all(torch.equal(a, b) for a, b in zip(parents, before, strict=True))


# ---------------------------------------------------------------- gradients, sharing and external weights


def test_gradient_reaches_alphas_and_operation_weights():
    cell = make_cell(True, True)
    out = cell(parents_for(cell, 5))
    (out * torch.randn_like(out)).sum().backward()
    assert cell.weights.grad is not None and cell.weights.grad.abs().min() > 0
    for name, p in cell.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_weight_sharing_between_cells():
    first = make_cell()
    shared = first.get_weights()
    second = make_cell(weights=shared)
    assert second.get_weights() is shared
    net = nn.ModuleList([first, second])
    specials = [p for p in net.parameters() if isinstance(p, arch.SpecialParameter)]
    assert len(specials) == 1 and specials[0] is shared
    parents = parents_for(first, 5)
    (first(parents).square().sum() + second(parents).square().sum()).backward()
    grad_both = shared.grad.clone()
    shared.grad = None
    first(parents).square().sum().backward()
    assert not torch.allclose(grad_both, shared.grad)  # both cells contribute to the one gradient


def test_forward_with_external_weights():
    cell = make_cell()
    parents = parents_for(cell, 5)
    external = torch.randn(14, 8, requires_grad=True)
    out = cell(parents, weights=external)
    (out * torch.randn_like(out)).sum().backward()
    assert external.grad is not None and external.grad.abs().min() > 0
    assert cell.weights.grad is None
    cell.eval()  # same BN statistics for the comparison
    with torch.no_grad():
        expected_out = cell(parents, weights=external)
        cell.weights.copy_(external)
        torch.testing.assert_close(cell(parents), expected_out)


# ---------------------------------------------------------------- genotype


def test_get_genotype_is_the_argmax_of_each_edge():
    cell = make_cell()
    with torch.no_grad():
        cell.weights.zero_()
        for edge in range(14):
            cell.weights[edge, edge % 8] = 1.0
    genotype = cell.get_genotype()
    assert genotype == [list(PRIMS)[edge % 8] for edge in range(14)]


def test_fixed_cell_from_genotype():
    genotype = ["sep_conv_3x3", "skip_connect", "none", "dil_conv_5x5", "max_pool_3x3"]
    genotype = (genotype * 3)[:14]
    cell = make_cell(True, False, genotype=genotype)
    assert cell.get_genotype() == genotype
    assert cell.get_weights() is None
    assert not any(isinstance(p, arch.SpecialParameter) for p in cell.parameters())
    assert len(cell.edge_ops) == 14
    assert isinstance(cell.edge_ops[1], arch.ReduceChannels2d)  # skip_connect from an input of a reduction
    assert cell.edge_ops[0].first.bn.affine and cell.edge_ops[0].second.bn.affine  # fixed cells are affine
    parents = parents_for(cell, 7)
    out = cell(parents)
    assert out.shape == (2, 16, 4, 4)
    # the fixed cell is the sum of its edge operations
    states = [cell.preprocess0(parents[0]), cell.preprocess1(parents[1])]
    edge = 0
    for node in range(4):
        states.append(sum(naive_op(cell.edge_ops[edge + j], h) for j, h in enumerate(states)))
        edge += 2 + node
    torch.testing.assert_close(out, torch.cat(states[2:], dim=1))


def test_fixed_cell_node_with_only_none_edges_is_zero():
    genotype = ["none", "none"] + ["skip_connect"] * 12
    cell = make_cell(genotype=genotype, affine=False)
    out = cell(parents_for(cell, 5))
    assert torch.equal(out[:, :4], torch.zeros(2, 4, 5, 5))


def test_fixed_cell_search_cell_genotype_round_trip():
    search = make_cell()
    fixed = make_cell(genotype=search.get_genotype())
    assert fixed.get_genotype() == search.get_genotype()


# ---------------------------------------------------------------- errors


def test_error_wrong_weights_shape():
    with pytest.raises(ValueError, match=r"shape \(14, 8\)"):
        make_cell(weights=arch.SpecialParameter(torch.zeros(14, 7)))


@pytest.mark.parametrize("weights", [torch.zeros(14, 8), nn.Parameter(torch.zeros(14, 8))])
def test_error_weights_not_a_special_parameter(weights):
    with pytest.raises(ValueError, match=r"SpecialParameter of shape \(14, 8\)"):
        make_cell(weights=weights)


def test_error_forward_weights_wrong_shape():
    cell = make_cell()
    with pytest.raises(ValueError, match=r"shape \(14, 8\).*got \(8, 14\)"):
        cell(parents_for(cell, 5), weights=torch.zeros(8, 14))


def test_error_parents_not_two():
    cell = make_cell()
    with pytest.raises(ValueError, match="list of 2 tensors"):
        cell(parents_for(cell, 5)[:1])


def test_error_genotype_wrong_length():
    with pytest.raises(ValueError, match="expected 14 names"):
        make_cell(genotype=["skip_connect"] * 13)
    with pytest.raises(ValueError, match="expected 5 names for internal_nodes=2"):
        make_cell(genotype=["skip_connect"] * 14, internal_nodes=2)


def test_error_genotype_unknown_operation():
    with pytest.raises(ValueError, match=r"unknown operations \['conv_9x9'\]"):
        make_cell(genotype=["skip_connect"] * 13 + ["conv_9x9"])


def test_error_genotype_with_weights_and_fixed_forward_with_weights():
    with pytest.raises(ValueError, match="exclusive"):
        make_cell(genotype=["skip_connect"] * 14, weights=arch.SpecialParameter(torch.zeros(14, 8)))
    cell = make_cell(genotype=["skip_connect"] * 14)
    with pytest.raises(ValueError, match="takes no weights"):
        cell(parents_for(cell, 5), weights=torch.zeros(14, 8))


def test_error_internal_nodes():
    with pytest.raises(ValueError, match="internal_nodes must be >= 1"):
        make_cell(internal_nodes=0)


# ---------------------------------------------------------------- user operations on 1-D data


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


USER_PRIMS = {"linear": lambda C, stride, affine: nn.Linear(C, C), "sin": lambda C, stride, affine: Sin()}


def test_user_operations_on_1d_data():
    cell = arch.Cell(USER_PRIMS, 5, 5, 5, False, False, internal_nodes=3, with_preprocessing=False)
    x0, x1 = torch.randn(7, 5), torch.randn(7, 5)
    out = cell([x0, x1])
    assert out.shape == (7, 15) and cell.out_channels == 15
    out.square().sum().backward()
    assert cell.weights.grad.shape == (9, 2) and cell.weights.grad.abs().min() > 0
    # node 0 by hand
    w = F.softmax(cell.weights.detach(), dim=-1)
    lin0, lin1 = cell.mixed_ops[0].ops[0], cell.mixed_ops[1].ops[0]
    node0 = w[0, 0] * lin0(x0) + w[0, 1] * torch.sin(x0) + w[1, 0] * lin1(x1) + w[1, 1] * torch.sin(x1)
    torch.testing.assert_close(out[:, :5], node0)
    fixed = arch.Cell(
        USER_PRIMS, 5, 5, 5, False, False, internal_nodes=3, with_preprocessing=False, genotype=["sin"] * 9
    )
    assert fixed([x0, x1]).shape == (7, 15)


# ---------------------------------------------------------------- SpecialParameter


def test_special_parameter_basics():
    p = arch.SpecialParameter(torch.ones(2, 3))
    assert isinstance(p, nn.Parameter) and p.requires_grad and p.shape == (2, 3)
    assert not arch.SpecialParameter(torch.ones(1), requires_grad=False).requires_grad
    assert "SpecialParameter" in repr(p)
    assert type(p * 2) is torch.Tensor  # results of operations are plain tensors


def test_special_parameter_survives_deepcopy_to_and_state_dict():
    net = nn.ModuleList([make_cell(), make_cell()])
    net.append(make_cell(weights=net[0].weights))
    copied = copy.deepcopy(net)
    assert isinstance(copied[0].weights, arch.SpecialParameter)
    assert copied[2].weights is copied[0].weights  # sharing kept
    net.to(torch.float64)
    assert isinstance(net[0].weights, arch.SpecialParameter) and net[0].weights.dtype == torch.float64
    assert net[2].weights is net[0].weights
    other = nn.ModuleList([make_cell(), make_cell()])
    other.append(make_cell(weights=other[0].weights))
    other.to(torch.float64).load_state_dict(net.state_dict())
    assert isinstance(other[1].weights, arch.SpecialParameter)
    assert torch.equal(other[1].weights, net[1].weights)


def test_special_parameter_survives_torch_save_of_a_whole_module():
    net = nn.ModuleList([make_cell(), make_cell()])
    net.append(make_cell(weights=net[0].weights))
    buffer = io.BytesIO()
    torch.save(net, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded[0].weights, arch.SpecialParameter)
    assert loaded[2].weights is loaded[0].weights
    assert torch.equal(loaded[1].weights, net[1].weights)
    parents = parents_for(net[0], 4)
    net.eval()
    loaded.eval()
    torch.testing.assert_close(loaded[1](parents), net[1](parents))


@pytest.mark.parametrize("channels_last", [False, True])
def test_node_gradients_reach_the_edges_contiguous(channels_last):
    """The gradient of a node is a channel slice of the concatenation's gradient; the edges get a copy
    in the node's memory format (the channels_last CPU BatchNorm backward is far slower on a slice)."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    cell = make_cell().to(memory_format=fmt)
    parents = [p.contiguous(memory_format=fmt) for p in parents_for(cell, 6)]
    seen: list[torch.Tensor] = []
    last_edge = cell.mixed_ops[-1]
    last_edge.register_full_backward_hook(lambda module, grad_in, grad_out: seen.append(grad_out[0]))
    out = cell(parents)
    reference = naive_cell(cell, parents)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
    out.backward(torch.randn_like(out))
    assert len(seen) == 1
    assert seen[0].is_contiguous(memory_format=fmt)
