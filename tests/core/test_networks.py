"""SearchNetwork (the DARTS supernet) and GenotypeNetwork (the discrete evaluation network)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from darts_core.nn.genotype_network import AuxiliaryHead, GenotypeNetwork, drop_path
from darts_core.nn.ops import Identity, ReduceChannels2d, SepConv2d
from darts_core.nn.search_network import SearchNetwork
from darts_core.nn.special_parameter import SpecialParameter
from darts_core.spec.genotype import DARTS_OP_NAMES, DARTS_V2, Genotype

# Parameter counts printed by the DARTS reference code (quark0/darts, `param size = ...MB` in its logs,
# counting every element of model.parameters()):
#   cnn/train_search.py, Network(C=16, 10 classes, layers=8) on 32x32x3: 1.930618 M (alphas are not
#   module parameters there, so this is our weight_parameters());
#   cnn/train.py, NetworkCIFAR(C=36, layers=20, auxiliary, DARTS_V2): 3.349342 M without the auxiliary
#   head, the "3.3M" of the paper's table 1.
# Our operations and bookkeeping follow the reference exactly, so the counts are equal, not just close.
REFERENCE_SEARCH_WEIGHTS = 1_930_618
REFERENCE_DARTS_V2_PARAMETERS = 3_349_342


def _count(parameters) -> int:
    return sum(p.numel() for p in parameters)


@pytest.fixture(scope="module")
def reference_supernet() -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(in_channels=3, num_classes=10, init_channels=16, cells=8)


@pytest.fixture
def small_supernet() -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(in_channels=1, num_classes=5, init_channels=4, cells=3)


# ---------------------------------------------------------------------------------------- SearchNetwork


def test_supernet_size_matches_the_darts_reference(reference_supernet: SearchNetwork) -> None:
    net = reference_supernet
    weights = _count(net.weight_parameters())
    assert weights == REFERENCE_SEARCH_WEIGHTS
    # The paper's "about 1.93 M" for the search configuration.
    assert abs(weights - 1.93e6) / 1.93e6 < 0.001
    alphas = net.arch_parameters()
    assert [tuple(a.shape) for a in alphas] == [(14, 8), (14, 8)]
    assert all(isinstance(a, SpecialParameter) for a in alphas)
    assert _count(net.parameters()) == REFERENCE_SEARCH_WEIGHTS + 2 * 14 * 8


def test_supernet_forward_shape_on_cifar_sized_input(reference_supernet: SearchNetwork) -> None:
    with torch.no_grad():
        logits = reference_supernet(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()


def test_each_alpha_is_shared_by_all_cells_of_its_kind_and_yielded_once(
    reference_supernet: SearchNetwork,
) -> None:
    net = reference_supernet
    params = list(net.parameters())
    ids = [id(p) for p in params]
    assert len(ids) == len(set(ids))
    alpha_normal, alpha_reduce = net.arch_parameters()
    assert ids.count(id(alpha_normal)) == 1 and ids.count(id(alpha_reduce)) == 1
    reductions = [index for index, cell in enumerate(net.cells) if cell.is_reduction]
    assert reductions == [8 // 3, 2 * 8 // 3]
    for index, cell in enumerate(net.cells):
        expected = alpha_reduce if index in reductions else alpha_normal
        assert cell.get_weights() is expected
        # The cell after a reduction halves its input 0 with a factorized reduction.
        assert isinstance(cell.preprocess0, ReduceChannels2d) == (index - 1 in reductions)
    arch_ids = {id(alpha_normal), id(alpha_reduce)}
    weight_ids = {id(p) for p in net.weight_parameters()}
    assert weight_ids.isdisjoint(arch_ids)
    assert weight_ids | arch_ids == set(ids)


def test_supernet_channels_double_at_each_reduction(reference_supernet: SearchNetwork) -> None:
    net = reference_supernet
    assert net.stem[0].out_channels == 3 * 16
    # Cell widths 16, 16, 32 (reduction), 32, 32, 64 (reduction), 64, 64; each outputs 4 nodes.
    assert [cell.out_channels for cell in net.cells] == [64, 64, 128, 128, 128, 256, 256, 256]
    assert net.classifier.in_features == 256


def test_gradients_reach_alphas_and_every_weight(small_supernet: SearchNetwork) -> None:
    net = small_supernet
    x = torch.randn(4, 1, 8, 8)
    loss = nn.functional.cross_entropy(net(x), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    for alpha in net.arch_parameters():
        assert alpha.grad is not None and alpha.grad.abs().sum() > 0
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert missing == []


def test_override_alphas_equal_the_same_values_set_in_the_parameters(small_supernet: SearchNetwork) -> None:
    net = small_supernet.eval()
    x = torch.randn(3, 1, 8, 8)
    before = net(x)
    new_normal = torch.randn(14, 8, requires_grad=True)
    new_reduce = torch.randn(14, 8, requires_grad=True)
    overridden = net(x, alphas=(new_normal, new_reduce))
    assert not torch.allclose(overridden, before, atol=1e-4)  # the override is really used
    with torch.no_grad():
        net.alphas_normal.copy_(new_normal)
        net.alphas_reduce.copy_(new_reduce)
    torch.testing.assert_close(net(x), overridden)
    # The override is differentiable (what a functional unrolled step needs).
    overridden.sum().backward()
    assert new_normal.grad is not None and new_reduce.grad is not None


def test_override_alphas_of_a_wrong_shape_is_rejected(small_supernet: SearchNetwork) -> None:
    with pytest.raises(ValueError, match=r"alphas_reduce must have shape \(14, 8\)"):
        small_supernet(torch.randn(2, 1, 8, 8), alphas=(torch.zeros(14, 8), torch.zeros(10, 8)))


@pytest.mark.parametrize("size", [8, 7, 5, 3])
def test_tiny_and_odd_inputs_work(size: int) -> None:
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=1, num_classes=10, init_channels=4, cells=5)
    # Reductions at cells 1 and 3: 8 -> 4 -> 2, 7 -> 4 -> 2, 5 -> 3 -> 2, 3 -> 2 -> 1.
    assert net(torch.randn(2, 1, size, size)).shape == (2, 10)


def test_primitives_given_as_names() -> None:
    names = ["none", "skip_connect", "sep_conv_3x3"]
    net = SearchNetwork(in_channels=1, num_classes=3, init_channels=4, cells=3, primitives=names)
    assert net.primitive_names == names
    assert [tuple(a.shape) for a in net.arch_parameters()] == [(14, 3), (14, 3)]
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    genotype = net.genotype()
    assert {op for op, _ in (*genotype.normal, *genotype.reduce)} <= {"skip_connect", "sep_conv_3x3"}


def test_unknown_primitive_is_rejected_with_its_name() -> None:
    with pytest.raises(ValueError, match="conv_9x9"):
        SearchNetwork(in_channels=1, num_classes=3, primitives=["none", "conv_9x9"])


@pytest.mark.parametrize(
    ("argument", "value"), [("cells", 0), ("init_channels", -1), ("num_classes", 0), ("internal_nodes", 0)]
)
def test_bad_sizes_are_rejected_naming_the_argument(argument: str, value: int) -> None:
    kwargs = {"in_channels": 1, "num_classes": 3, argument: value}
    with pytest.raises(ValueError, match=argument):
        SearchNetwork(**kwargs)


def test_other_node_counts(small_supernet: SearchNetwork) -> None:
    torch.manual_seed(0)
    net = SearchNetwork(in_channels=1, num_classes=4, init_channels=4, cells=3, internal_nodes=2)
    assert [tuple(a.shape) for a in net.arch_parameters()] == [(5, 8), (5, 8)]
    assert [cell.out_channels for cell in net.cells] == [8, 16, 32]
    assert net(torch.randn(2, 1, 9, 9)).shape == (2, 4)
    genotype = net.genotype()
    assert genotype.num_nodes == 2 and genotype.normal_concat == (2, 3)


def test_genotype_follows_the_alphas(small_supernet: SearchNetwork) -> None:
    net = small_supernet
    op = {name: index for index, name in enumerate(net.primitive_names)}
    assert net.primitive_names == list(DARTS_OP_NAMES)
    with torch.no_grad():
        net.alphas_normal.zero_()
        net.alphas_reduce.zero_()
        net.alphas_normal[:, op["none"]] = 10.0  # `none` never wins in a genotype
        net.alphas_normal[:, op["sep_conv_5x5"]] = 3.0
        net.alphas_normal[0, op["dil_conv_3x3"]] = 5.0
        net.alphas_reduce[:, op["max_pool_3x3"]] = 2.0
    genotype = net.genotype()
    assert genotype.normal[0] == ("dil_conv_3x3", 0)
    assert {op_name for op_name, _ in genotype.normal[1:]} == {"sep_conv_5x5"}
    assert {op_name for op_name, _ in genotype.reduce} == {"max_pool_3x3"}
    assert genotype.normal_concat == (2, 3, 4, 5)


def test_softmaxed_alphas(small_supernet: SearchNetwork) -> None:
    alphas = small_supernet.softmaxed_alphas()
    assert set(alphas) == {"normal", "reduce"}
    for kind, values in alphas.items():
        assert values.shape == (14, 8)
        assert not values.requires_grad
        torch.testing.assert_close(values.sum(dim=1), torch.ones(14))
        raw = getattr(small_supernet, f"alphas_{kind}")
        torch.testing.assert_close(values, torch.softmax(raw.detach(), dim=1))


# ---------------------------------------------------------------------------------------- GenotypeNetwork


def test_darts_v2_network_has_the_paper_size() -> None:
    torch.manual_seed(0)
    net = GenotypeNetwork(DARTS_V2, in_channels=3, num_classes=10, init_channels=36, cells=20, auxiliary=True)
    without_head = _count(p for name, p in net.named_parameters() if not name.startswith("auxiliary_head."))
    assert without_head == REFERENCE_DARTS_V2_PARAMETERS
    # The paper's table 1 gives 3.3 M (rounded): within 2 %.
    assert abs(without_head - 3.3e6) / 3.3e6 < 0.02
    # The auxiliary head of the reference (576 -> 128 -> 768 -> 10) adds 476,426 parameters.
    assert (
        _count(net.auxiliary_head.parameters())
        == 576 * 128 + 2 * 128 + 128 * 768 * 4 + 2 * 768 + 768 * 10 + 10
    )
    assert net.auxiliary_index == 13


def test_darts_v2_cells_hold_only_the_chosen_operations() -> None:
    net = GenotypeNetwork(DARTS_V2, in_channels=1, num_classes=10, init_channels=8, cells=5)
    normal, reduce = net.cells[0], net.cells[1]
    assert not normal.is_reduction and reduce.is_reduction
    assert len(normal.ops) == 8 and len(reduce.ops) == 8
    assert isinstance(normal.ops[0], SepConv2d)
    assert isinstance(normal.ops[5], Identity)  # skip_connect at stride 1
    assert isinstance(reduce.ops[0], nn.MaxPool2d)  # the bare pool of the evaluation network
    assert isinstance(reduce.ops[2], Identity)  # skip_connect from node 0 inside a reduction cell
    assert isinstance(net.cells[2].preprocess0, ReduceChannels2d)  # the cell after a reduction
    # Affine BN everywhere in the evaluation network.
    assert all(bn.affine for bn in net.modules() if isinstance(bn, nn.BatchNorm2d))


@pytest.mark.parametrize(("size", "channels"), [(8, 1), (32, 3), (5, 1)])
def test_genotype_network_shapes_with_and_without_auxiliary(size: int, channels: int) -> None:
    torch.manual_seed(0)
    x = torch.randn(3, channels, size, size)
    plain = GenotypeNetwork(DARTS_V2, channels, num_classes=7, init_channels=8, cells=5)
    assert plain.train()(x).shape == (3, 7)
    assert plain.eval()(x).shape == (3, 7)
    with_head = GenotypeNetwork(DARTS_V2, channels, num_classes=7, init_channels=8, cells=5, auxiliary=True)
    logits, aux_logits = with_head.train()(x)
    assert logits.shape == (3, 7) and aux_logits.shape == (3, 7)
    assert with_head.eval()(x).shape == (3, 7)  # no auxiliary output at evaluation


def test_auxiliary_head_pools_like_darts_on_8x8_maps() -> None:
    head = AuxiliaryHead(16, 10)
    # 8x8 -> 5x5/3 average pool -> 2x2 -> 2x2 conv -> 1x1; smaller maps are pooled adaptively to 2x2.
    for size in (8, 4, 2, 1):
        assert head(torch.randn(2, 16, size, size)).shape == (2, 10)


def test_drop_path_only_in_training() -> None:
    torch.manual_seed(0)
    net = GenotypeNetwork(DARTS_V2, 1, num_classes=5, init_channels=8, cells=3, drop_path_prob=0.0)
    x = torch.randn(4, 1, 8, 8)

    def train_forward(model: nn.Module, drop_prob: float, seed: int) -> torch.Tensor:
        model = copy.deepcopy(model).train()  # a training forward updates the BN running statistics
        model.drop_path_prob = drop_prob
        torch.manual_seed(seed)
        return model(x)

    # Without drop-path a training forward is deterministic; with it, it depends on the random mask.
    torch.testing.assert_close(train_forward(net, 0.0, 1), train_forward(net, 0.0, 2))
    assert not torch.allclose(train_forward(net, 0.5, 1), train_forward(net, 0.5, 2))
    torch.testing.assert_close(train_forward(net, 0.5, 1), train_forward(net, 0.5, 1))
    # At evaluation the probability is ignored and the output deterministic.
    net.eval()
    reference = net(x)
    net.drop_path_prob = 0.5
    torch.testing.assert_close(net(x), reference)
    torch.manual_seed(3)
    torch.testing.assert_close(net(x), reference)


def test_drop_path_drops_whole_samples_and_rescales_the_rest() -> None:
    torch.manual_seed(0)
    x = torch.ones(4000, 2, 3, 3)
    out = drop_path(x, 0.25)
    per_sample = out.flatten(1)
    kept = per_sample[:, 0] != 0
    torch.testing.assert_close(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert torch.all(per_sample[~kept] == 0)
    assert abs(kept.float().mean().item() - 0.75) < 0.03
    assert drop_path(x, 0.0) is x


@pytest.mark.parametrize("nodes", [2, 3, 5])
def test_genotypes_with_other_node_counts(nodes: int) -> None:
    normal = [("sep_conv_3x3", node) for node in range(nodes) for _ in range(2)]
    reduce = [("max_pool_3x3", 0), ("skip_connect", 1)] * nodes
    genotype = Genotype(
        normal=normal, normal_concat=range(2, 2 + nodes), reduce=reduce, reduce_concat=[2 + nodes - 1]
    )
    net = GenotypeNetwork(genotype, 1, num_classes=3, init_channels=6, cells=4, auxiliary=True)
    assert [cell.out_channels for cell in net.cells] == [6 * nodes, 12, 24, 24 * nodes]
    assert [cell.num_nodes for cell in net.cells] == [nodes] * 4
    logits, aux_logits = net.train()(torch.randn(2, 1, 8, 8))
    assert logits.shape == (2, 3) and aux_logits.shape == (2, 3)


def test_invalid_genotype_is_rejected() -> None:
    custom = Genotype(
        normal=[("my_op", 0), ("my_op", 1)],
        reduce=[("my_op", 0), ("my_op", 1)],
        primitives=["my_op"],
    )
    with pytest.raises(ValueError, match="my_op"):
        GenotypeNetwork(custom, 1, num_classes=3)
    with pytest.raises(ValueError, match="genotype must be a Genotype"):
        GenotypeNetwork(DARTS_V2.to_json(), 1, num_classes=3)
    with pytest.raises(ValueError, match="drop_path_prob"):
        GenotypeNetwork(DARTS_V2, 1, num_classes=3, drop_path_prob=1.0)
