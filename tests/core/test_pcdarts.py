"""PC-DARTS in darts_core: partial channels, channel shuffle, edge normalization, alpha x beta ranking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from darts_core.nn import ops, recompute
from darts_core.nn.cell import Cell
from darts_core.nn.edge_weights import edge_softmax
from darts_core.nn.mixed_op import _interleave, channel_shuffle
from darts_core.nn.search_network import SearchNetwork
from darts_core.nn.special_parameter import SpecialParameter
from darts_core.search.derive import derive_genotype
from darts_core.spec.genotype import num_edges

PRIMITIVES = list(ops.DARTS_PRIMITIVES_2D)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _seeded() -> None:
    torch.manual_seed(0)


def _outputs_and_gradients(
    network: SearchNetwork, channels_last: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(4, 3, 12, 12, generator=generator)
    labels = torch.randint(0, 5, (4,), generator=generator)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    logits = network(images)
    return logits.detach(), list(
        torch.autograd.grad(F.cross_entropy(logits, labels), list(network.parameters()))
    )


@pytest.mark.parametrize("channels_last", [False, True])
def test_k1_without_edge_normalization_is_darts_bit_for_bit(channels_last: bool) -> None:
    """The PC-DARTS options at their defaults change nothing: same draws, same outputs and gradients.

    (Checked against darts_core before these options existed, commit 691eda7, by the same comparison:
    logits, every gradient and every parameter after two first- and second-order steps torch.equal.)
    """
    torch.manual_seed(7)
    plain = SearchNetwork(3, 5, init_channels=8, cells=4)
    torch.manual_seed(7)
    explicit = SearchNetwork(3, 5, init_channels=8, cells=4, partial_channels=1, edge_normalization=False)
    assert len(explicit.arch_parameters()) == 2
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), explicit.parameters(), strict=True))
    out_a, grads_a = _outputs_and_gradients(plain, channels_last)
    out_b, grads_b = _outputs_and_gradients(explicit, channels_last)
    assert torch.equal(out_a, out_b)
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


@pytest.mark.parametrize("groups", [2, 4])
@pytest.mark.parametrize("channels_last", [False, True])
def test_channel_shuffle_interleaves_groups_and_keeps_the_layout(groups: int, channels_last: bool) -> None:
    x = torch.arange(2 * 8 * 3 * 3, dtype=torch.float32).reshape(2, 8, 3, 3)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    shuffled = channel_shuffle(x, groups)
    per_group = 8 // groups
    for g in range(groups):
        for i in range(per_group):
            assert torch.equal(shuffled[:, i * groups + g], x[:, g * per_group + i])
    assert shuffled.is_contiguous(memory_format=torch.channels_last) == channels_last
    # The fused concatenation + shuffle of the cell is the same permutation.
    pieces = [torch.randn(2, 3, 4, 4) for _ in range(groups)]
    if channels_last:
        pieces = [piece.contiguous(memory_format=torch.channels_last) for piece in pieces]
    assert torch.equal(_interleave(pieces), channel_shuffle(torch.cat(pieces, dim=1), groups))


def test_channel_shuffle_rejects_groups_that_do_not_divide() -> None:
    with pytest.raises(ValueError, match="groups"):
        channel_shuffle(torch.randn(1, 6, 2, 2), 4)


def _naive_partial_cell(cell: Cell, parents: list[torch.Tensor], k: int) -> torch.Tensor:
    """The PC-DARTS reference computation of one cell, straight from its description."""
    states = [cell.preprocess0(parents[0]), cell.preprocess1(parents[1])]
    alphas = F.softmax(cell.weights, dim=-1)
    betas = edge_softmax(cell.edge_weights, cell.internal_nodes) if cell.edge_normalization else None
    edge = 0
    for _ in range(cell.internal_nodes):
        total = 0
        for state in states:
            part = state.shape[1] // k
            through, passed = state[:, :part], state[:, part:]
            mixed = cell.mixed_ops[edge]
            out = sum(
                w * op(through)
                for w, op in zip(alphas[edge], mixed.ops, strict=True)
                if not isinstance(op, ops.Zero2d)
            )
            if out.shape[2] != state.shape[2]:
                passed = F.max_pool2d(passed, 2, 2, ceil_mode=True)
            out = channel_shuffle(torch.cat([out, passed], dim=1), k) if k > 1 else out
            total = total + (betas[edge] * out if betas is not None else out)
            edge += 1
        states.append(total)
    return torch.cat(states[2:], dim=1)


@pytest.mark.parametrize(
    ("k", "edge_normalization", "reduction", "size"),
    [(4, True, False, 6), (4, True, True, 6), (4, False, True, 7), (2, True, True, 5), (1, True, False, 4)],
)
def test_partial_cell_matches_the_naive_computation(
    k: int, edge_normalization: bool, reduction: bool, size: int
) -> None:
    cell = Cell(
        PRIMITIVES, 6, 10, 8, reduction, False, partial_channels=k, edge_normalization=edge_normalization
    )
    with torch.no_grad():
        cell.weights.normal_(0.0, 0.5)
        if cell.edge_weights is not None:
            cell.edge_weights.normal_(0.0, 0.5)
    parents = [torch.randn(3, 6, size, size), torch.randn(3, 10, size, size)]
    ours = cell(parents)
    expected = _naive_partial_cell(cell, parents, k)
    assert (
        ours.shape
        == expected.shape
        == (3, 32, -(-size // 2) if reduction else size, -(-size // 2) if reduction else size)
    )
    assert (ours - expected).abs().max().item() < 1e-5
    arch = [cell.weights] + ([cell.edge_weights] if edge_normalization else [])
    for a, b in zip(
        torch.autograd.grad(ours.square().sum(), arch),
        torch.autograd.grad(expected.square().sum(), arch),
        strict=True,
    ):
        assert (a - b).abs().max().item() < 1e-4 * max(1.0, b.abs().max().item())


def test_operations_see_only_one_kth_of_the_channels() -> None:
    network = SearchNetwork(3, 5, init_channels=16, cells=3, partial_channels=4)
    for cell in network.cells:
        width = cell.preprocess1.conv.out_channels
        sep = cell.mixed_ops[0].ops[PRIMITIVES.index("sep_conv_3x3")]
        assert sep.first.depthwise.in_channels == width // 4
    full = SearchNetwork(3, 5, init_channels=16, cells=3)
    count = lambda net: sum(p.numel() for p in net.weight_parameters())  # noqa: E731
    assert count(network) < count(full) / 2


def test_edge_normalization_adds_shared_betas_as_architecture_parameters() -> None:
    network = SearchNetwork(3, 5, init_channels=8, cells=3, partial_channels=4, edge_normalization=True)
    arch = network.arch_parameters()
    assert [tuple(t.shape) for t in arch] == [(14, 8), (14, 8), (14,), (14,)]
    assert all(isinstance(t, SpecialParameter) for t in arch)
    ids = {id(t) for t in arch}
    assert not ids & {id(p) for p in network.weight_parameters()}
    assert sum(1 for p in network.parameters() if id(p) in ids) == 4  # each yielded once
    for cell, reduction in zip(network.cells, network.reduction_cells, strict=True):
        assert cell.edge_weights is (network.betas_reduce if reduction else network.betas_normal)
    assert "betas_normal" in network.state_dict()
    softmaxed = network.softmaxed_betas()
    assert torch.allclose(softmaxed["normal"][:2].sum(), torch.tensor(1.0))
    assert SearchNetwork(3, 5, init_channels=8, cells=3, partial_channels=4).softmaxed_betas() is None


def test_override_of_all_four_architecture_tensors_equals_setting_them() -> None:
    network = SearchNetwork(3, 5, init_channels=8, cells=3, partial_channels=2, edge_normalization=True)
    images = torch.randn(2, 3, 8, 8)
    new = [torch.randn_like(t) for t in network.arch_parameters()]
    network.eval()
    overridden = network(images, alphas=new)
    with torch.no_grad():
        for tensor, value in zip(network.arch_parameters(), new, strict=True):
            tensor.copy_(value)
    assert torch.equal(overridden, network(images))
    with pytest.raises(ValueError, match="4 tensors"):
        network(images, alphas=new[:2])
    with pytest.raises(ValueError, match="betas_reduce"):
        network(images, alphas=[*new[:3], torch.zeros(3)])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"init_channels": 6, "partial_channels": 4}, "partial_channels"),
        ({"partial_channels": 0}, "partial_channels"),
    ],
)
def test_bad_partial_channels_are_rejected_naming_the_argument(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchNetwork(3, 5, cells=3, **{"init_channels": 8, **kwargs})


def test_genotype_ranks_edges_by_alpha_times_beta() -> None:
    edges = num_edges(2)
    alphas = torch.zeros(edges, len(PRIMITIVES))
    # Node 0: edge 0 has the stronger op; node 1: edge 2 (from state 0) strongest by alpha.
    alphas[0, PRIMITIVES.index("sep_conv_3x3")] = 2.0
    alphas[1, PRIMITIVES.index("skip_connect")] = 1.0
    alphas[2, PRIMITIVES.index("dil_conv_3x3")] = 3.0
    alphas[3, PRIMITIVES.index("max_pool_3x3")] = 2.5
    alphas[4, PRIMITIVES.index("avg_pool_3x3")] = 2.4
    plain = derive_genotype(alphas, alphas, PRIMITIVES, 2)
    assert [index for _, index in plain.normal[2:]] == [0, 1]
    # Betas that strongly prefer the node's last input (edge 4, from state 2) and ignore edge 2.
    betas = torch.tensor([0.0, 0.0, -5.0, 0.0, 3.0])
    weighted = derive_genotype(
        alphas, alphas, PRIMITIVES, 2, betas_normal=betas, betas_reduce=torch.zeros(edges)
    )
    assert weighted.normal[2:] == (("avg_pool_3x3", 2), ("max_pool_3x3", 1))
    assert weighted.reduce == plain.reduce  # equal betas rank as alphas alone
    # The operation chosen on an edge never changes (beta scales a whole row).
    assert {index: op for op, index in weighted.normal[:2]} == {index: op for op, index in plain.normal[:2]}
    with pytest.raises(ValueError, match="betas_normal and betas_reduce"):
        derive_genotype(alphas, alphas, PRIMITIVES, 2, betas_normal=betas)
    with pytest.raises(ValueError, match="betas_reduce"):
        derive_genotype(alphas, alphas, PRIMITIVES, 2, betas_normal=betas, betas_reduce=torch.zeros(3))


def test_network_genotype_uses_the_betas() -> None:
    network = SearchNetwork(
        3, 5, init_channels=8, cells=3, internal_nodes=2, partial_channels=2, edge_normalization=True
    )
    with torch.no_grad():
        network.alphas_normal.normal_(0.0, 1.0)
        network.betas_normal.copy_(torch.tensor([0.0, 0.0, 4.0, -4.0, 0.0]))
    expected = derive_genotype(
        network.alphas_normal,
        network.alphas_reduce,
        PRIMITIVES,
        2,
        betas_normal=network.betas_normal,
        betas_reduce=network.betas_reduce,
    )
    assert network.genotype() == expected
    assert network.genotype().normal[2][1] == 0  # node 1's strongest edge by beta is from state 0


def test_edge_softmax_is_per_node() -> None:
    betas = torch.randn(num_edges(4))
    weights = edge_softmax(betas, 4)
    sums = [part.sum().item() for part in weights.split([2, 3, 4, 5])]
    assert sums == pytest.approx([1.0] * 4)
    with pytest.raises(ValueError, match="betas"):
        edge_softmax(torch.randn(5), 4)


def test_fixed_cells_refuse_the_pc_darts_options() -> None:
    with pytest.raises(ValueError, match="search cells only"):
        Cell(PRIMITIVES, 4, 4, 4, False, False, genotype=["skip_connect"] * 14, partial_channels=2)


def test_twice_differentiable_gives_the_same_values() -> None:
    network = SearchNetwork(3, 5, init_channels=8, cells=3, partial_channels=4, edge_normalization=True)
    out, grads = _outputs_and_gradients(network, channels_last=True)
    with recompute.twice_differentiable():
        out_plain, grads_plain = _outputs_and_gradients(network, channels_last=True)
    assert (out - out_plain).abs().max().item() < 1e-6
    assert all((a - b).abs().max().item() < 1e-5 for a, b in zip(grads, grads_plain, strict=True))
