"""DartsSearch (first and second order), SearchConfig validation, run_search (checkpoints, stop, payload)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from darts_core.checkpoint import PREVIOUS_CHECKPOINT_NAME, read_history
from darts_core.search.derive import derive_genotype
from darts_core.search.loop import (
    CHECKPOINT_NAME,
    DartsSearch,
    EpochResult,
    SearchConfig,
    run_search,
)
from darts_core.spec.genotype import DARTS_OP_NAMES, Genotype, num_edges
from darts_core.spec.records import EpochRecord

# --------------------------------------------------------------------------------------------- helpers

TINY_PRIMITIVES = ("none", "sep_conv_3x3", "avg_pool_3x3", "skip_connect")


class _Subsampled(nn.Module):
    """`module` on every second pixel: a stride-2 1x1 convolution written without oneDNN's strided
    1x1 kernel, whose channels_last backward with fewer than 8 channels corrupts the heap (see
    darts_core.nn.ops.ReduceChannels2d)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> Tensor:
        return self.module(x[:, :, ::2, ::2])


class TinySearchNet(nn.Module):
    """A two-cell supernet with one internal node per cell and the methods of SearchNetwork.

    States: s0 = stem_a(x), s1 = stem_b(x) (C x H x W). The normal node mixes ops on s0 and s1 (two
    edges); the reduction node mixes stride-2 ops on s1 and the normal node. Ops per edge follow
    TINY_PRIMITIVES: none (skipped), a 3x3 conv + BN, a 3x3 average pool, identity (a strided 1x1 conv
    when reducing). BN layers have no affine part and run with batch statistics in train mode, so the
    running statistics matter only in eval mode, as in DARTS.
    """

    def __init__(
        self, in_channels: int = 1, num_classes: int = 3, channels: int = 4, activation: type = nn.ReLU
    ) -> None:
        super().__init__()
        self.activation = activation
        self.stem_a = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.stem_b = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels)
        )
        self.normal_edges = nn.ModuleList([self._edge(channels, 1) for _ in range(2)])
        self.reduce_edges = nn.ModuleList([self._edge(channels, 2) for _ in range(2)])
        self.alphas_normal = nn.Parameter(0.1 * torch.randn(2, len(TINY_PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(0.1 * torch.randn(2, len(TINY_PRIMITIVES)))
        self.classifier = nn.Linear(channels, num_classes)

    def _edge(self, channels: int, stride: int) -> nn.ModuleList:
        conv = nn.Sequential(
            self.activation(),
            nn.Conv2d(channels, channels, 3, stride, 1, bias=False),
            nn.BatchNorm2d(channels, affine=False),
        )
        pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False)
        skip = nn.Identity() if stride == 1 else _Subsampled(nn.Conv2d(channels, channels, 1, bias=False))
        return nn.ModuleList([conv, pool, skip])

    @staticmethod
    def _mixed(edges: nn.ModuleList, states: list[Tensor], alphas: Tensor) -> Tensor:
        weights = F.softmax(alphas, dim=-1)
        out = 0
        for edge, (ops, state) in enumerate(zip(edges, states, strict=True)):
            for column, op in enumerate(ops, start=1):  # column 0 is `none`: contributes nothing
                out = out + weights[edge, column] * op(state)
        return out

    def forward(self, x: Tensor, alphas: tuple[Tensor, Tensor] | None = None) -> Tensor:
        alphas_normal, alphas_reduce = alphas if alphas is not None else self.arch_parameters()
        s0, s1 = self.stem_a(x), self.stem_b(x)
        normal = self._mixed(self.normal_edges, [s0, s1], alphas_normal)
        reduced = self._mixed(self.reduce_edges, [s1, normal], alphas_reduce)
        return self.classifier(reduced.mean(dim=(2, 3)))

    def arch_parameters(self) -> list[Tensor]:
        return [self.alphas_normal, self.alphas_reduce]

    def weight_parameters(self) -> list[Tensor]:
        arch = {id(alpha) for alpha in self.arch_parameters()}
        return [p for p in self.parameters() if id(p) not in arch]

    def softmaxed_alphas(self) -> dict[str, Tensor]:
        return {
            "normal": F.softmax(self.alphas_normal.detach(), -1),
            "reduce": F.softmax(self.alphas_reduce.detach(), -1),
        }

    def genotype(self) -> Genotype:
        return derive_genotype(self.alphas_normal.detach(), self.alphas_reduce.detach(), TINY_PRIMITIVES, 1)


def _batch(
    generator: torch.Generator, n: int = 8, dtype: torch.dtype = torch.float32
) -> tuple[Tensor, Tensor]:
    return torch.randn(n, 1, 6, 6, generator=generator, dtype=dtype), torch.randint(
        0, 3, (n,), generator=generator
    )


def _tiny(seed: int = 0, dtype: torch.dtype = torch.float32, activation: type = nn.ReLU) -> TinySearchNet:
    torch.manual_seed(seed)
    return TinySearchNet(activation=activation).to(dtype)


def _snapshot(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().clone() for t in tensors]


def _all_equal(a: list[Tensor], b: list[Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def _none_equal(a: list[Tensor], b: list[Tensor]) -> bool:
    return not any(torch.equal(x, y) for x, y in zip(a, b, strict=True))


# --------------------------------------------------------------------------------------------- first order


def test_first_order_arch_gradient_touches_no_weight() -> None:
    generator = torch.Generator().manual_seed(1)
    train, valid = _batch(generator), _batch(generator)
    network = _tiny()
    search = DartsSearch(network, order="first")
    weights_before = _snapshot(search.weights)

    grads = search.arch_gradients(train, valid)

    reference_net = copy.deepcopy(network)
    loss = F.cross_entropy(reference_net(valid[0]), valid[1])
    expected = torch.autograd.grad(loss, reference_net.arch_parameters())
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want)
    assert all(weight.grad is None for weight in search.weights), "the arch step formed weight gradients"
    assert _all_equal(weights_before, search.weights)


def test_first_order_step_matches_the_two_updates_of_the_paper() -> None:
    generator = torch.Generator().manual_seed(2)
    train, valid = _batch(generator), _batch(generator)
    network = _tiny()
    reference = copy.deepcopy(network)
    search = DartsSearch(network, order="first", weight_lr=0.1, arch_lr=0.05, grad_clip=0.5)
    alphas_before, weights_before = _snapshot(search.alphas), _snapshot(search.weights)

    result = search.step(train, valid)

    # The same step written out by hand on a copy: Adam on dL_val/dalpha, then clipped SGD on dL_train/dw.
    arch_opt = torch.optim.Adam(reference.arch_parameters(), lr=0.05, betas=(0.5, 0.999), weight_decay=1e-3)
    weight_opt = torch.optim.SGD(reference.weight_parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
    valid_loss = F.cross_entropy(reference(valid[0]), valid[1])
    alpha_grads = torch.autograd.grad(valid_loss, reference.arch_parameters())
    for alpha, grad in zip(reference.arch_parameters(), alpha_grads, strict=True):
        alpha.grad = grad
    arch_opt.step()
    train_loss = F.cross_entropy(reference(train[0]), train[1])
    weight_grads = torch.autograd.grad(train_loss, reference.weight_parameters())
    for weight, grad in zip(reference.weight_parameters(), weight_grads, strict=True):
        weight.grad = grad
    torch.nn.utils.clip_grad_norm_(reference.weight_parameters(), 0.5)
    weight_opt.step()

    for got, want in zip(network.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got, want)
    for got, want in zip(network.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(got, want)
    assert _none_equal(alphas_before, search.alphas)
    assert _none_equal(weights_before, search.weights)
    # The weight step leaves the alphas' gradient as the arch step set it: it never differentiates alphas.
    for alpha, grad in zip(search.alphas, alpha_grads, strict=True):
        torch.testing.assert_close(alpha.grad, grad)
    floats = result.to_floats()
    assert floats["valid_loss"] == pytest.approx(valid_loss.item(), rel=1e-5)
    assert floats["train_loss"] == pytest.approx(train_loss.item(), rel=1e-5)
    assert 0.0 <= floats["train_acc"] <= 1.0 and 0.0 <= floats["valid_acc"] <= 1.0


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_end_epoch_anneals_the_weight_lr_on_a_cosine() -> None:
    search = DartsSearch(_tiny(), weight_lr=0.1, weight_lr_min=0.01, epochs=4)
    lrs = [search.lr]
    for _ in range(4):
        search.end_epoch()
        lrs.append(search.lr)
    expected = [0.01 + 0.09 * (1 + math.cos(math.pi * t / 4)) / 2 for t in range(5)]
    assert lrs == pytest.approx(expected)


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="order must be 'first' or 'second'"):
        DartsSearch(_tiny(), order="third")
    with pytest.raises(ValueError, match="epochs"):
        DartsSearch(_tiny(), epochs=0)


# --------------------------------------------------------------------------------------------- second order


def _unrolled_gradient_by_double_backward(search: DartsSearch, train, valid) -> list[Tensor]:
    """d/dalpha L_val(w - xi * (momentum * m + dL_train(w, alpha)/dw + wd * w), alpha) by autograd."""
    network = search.network
    names = {id(p): name for name, p in network.named_parameters()}
    weight_names = [names[id(w)] for w in search.weights]
    buffers = {name: b.clone() for name, b in network.named_buffers()}  # train mode: stats are not used
    xi, momentum, wd = search.lr, search.momentum, search.weight_decay

    def loss(batch, weights, alphas):
        tensors = {**buffers, **dict(zip(weight_names, weights, strict=True))}
        logits = functional_call(network, tensors, (batch[0],), {"alphas": tuple(alphas)})
        return F.cross_entropy(logits, batch[1])

    alphas = [a.detach().clone().requires_grad_(True) for a in search.alphas]
    weights = [w.detach().clone().requires_grad_(True) for w in search.weights]
    train_grads = torch.autograd.grad(loss(train, weights, alphas), weights, create_graph=True)
    unrolled = [
        w.detach()
        - xi * (momentum * search.weight_optimizer.state[p]["momentum_buffer"] + g + wd * w.detach())
        for w, g, p in zip(weights, train_grads, search.weights, strict=True)
    ]
    return list(torch.autograd.grad(loss(valid, unrolled, alphas), alphas))


def _relative_error(got: list[Tensor], want: list[Tensor]) -> float:
    diff = torch.cat([(g - w).flatten() for g, w in zip(got, want, strict=True)])
    return (diff.norm() / torch.cat([w.flatten() for w in want]).norm()).item()


def test_second_order_gradient_matches_double_backward_through_the_unrolled_step() -> None:
    """The finite-difference Hessian-vector product against the exact second-order gradient.

    float64 and a large weight lr (xi = 0.5) so the second-order term is a sizeable part of the gradient.
    The central difference with the paper's eps = 0.01 / ||v|| (a weight perturbation of norm 0.01) has
    a truncation error of order eps^2 times the third derivative along v: the two agree to ~3e-5 relative
    here, and 2e-3 leaves room for other seeds. The conv edges use tanh instead of ReLU for this check:
    a perturbation of norm 0.01 moves ReLU inputs across the kink, where the central difference measures
    a secant rather than the derivative (measured on this network with ReLU: 0.44 relative error at
    0.01 / ||v||, 4e-5 at 1e-4 / ||v||; that is the paper's approximation, not an error of the code).
    """
    generator = torch.Generator().manual_seed(3)
    warmup, train, valid = (_batch(generator, dtype=torch.float64) for _ in range(3))
    network = _tiny(dtype=torch.float64, activation=nn.Tanh)
    search = DartsSearch(network, order="second", weight_lr=0.5, weight_decay=0.01)
    search.step(warmup, warmup)  # fills SGD's momentum buffers, so the unrolled step uses them

    got = search.arch_gradients(train, valid)
    want = _unrolled_gradient_by_double_backward(search, train, valid)
    first_order = DartsSearch(copy.deepcopy(search.network), order="first").arch_gradients(train, valid)

    assert _relative_error(got, want) < 2e-3
    assert _relative_error(first_order, want) > 5e-2, "the second-order term is too small to test anything"


def test_second_order_step_changes_alphas_and_weights_and_keeps_running_stats_honest() -> None:
    generator = torch.Generator().manual_seed(4)
    train, valid = _batch(generator), _batch(generator)
    network = _tiny()
    search = DartsSearch(network, order="second", weight_lr=0.1, arch_lr=0.05)
    search.step(train, valid)  # momentum buffers now exist
    alphas_before, weights_before = _snapshot(search.alphas), _snapshot(search.weights)
    reference = copy.deepcopy(network)

    search.arch_gradients(train, valid)
    # Only the forward at the real weights on the train batch (for dL_train/dw) moves the running
    # statistics; the passes at w' and w+- run on scratch buffers.
    reference.train()
    with torch.no_grad():
        reference(train[0])
    for got, want in zip(network.buffers(), reference.buffers(), strict=True):
        torch.testing.assert_close(got, want)
    assert _all_equal(weights_before, search.weights) and _all_equal(alphas_before, search.alphas)

    search.step(train, valid)
    assert _none_equal(alphas_before, search.alphas)
    assert _none_equal(weights_before, search.weights)


def test_state_dict_round_trip_continues_identically() -> None:
    generator = torch.Generator().manual_seed(5)
    batches = [(_batch(generator), _batch(generator)) for _ in range(3)]
    search = DartsSearch(_tiny(), order="second", epochs=3)
    search.step(*batches[0])
    search.end_epoch()
    state = copy.deepcopy(search.state_dict())
    clone = DartsSearch(_tiny(seed=9), order="second", epochs=3)
    clone.load_state_dict(state)
    for first, second in ((search, batches[1]), (clone, batches[1])):
        first.step(*second)
    assert _all_equal(list(search.network.parameters()), list(clone.network.parameters()))
    assert search.lr == clone.lr


# --------------------------------------------------------------------------------------------- SearchConfig


def test_from_spec_fills_every_default_and_ignores_name_and_dataset() -> None:
    config = SearchConfig.from_spec({"name": "x", "dataset": {"name": "digits"}, "training": {"epochs": 3}})
    spec = config.to_spec()
    assert spec == {
        "search_space": {
            "primitives": list(DARTS_OP_NAMES),
            "internal_nodes": 4,
            "partial_channels": 1,
            "edge_normalization": False,
        },
        "network": {"cells": 8, "init_channels": 16, "stem_multiplier": 3},
        "training": {
            "epochs": 3,
            "batch_size": 64,
            "train_portion": 0.5,
            "order": "first",
            "weight_lr": 0.025,
            "weight_lr_min": 0.001,
            "momentum": 0.9,
            "weight_decay": 3e-4,
            "arch_lr": 3e-4,
            "arch_weight_decay": 1e-3,
            "grad_clip": 5.0,
            "seed": 0,
            "early_stop": None,
            "max_skip_connections": 2,
            "eigenvalue_window": 5,
            "eigenvalue_threshold": 1.3,
            "hessian_every": None,
            "augmentation": {"crop_padding": None, "horizontal_flip": None},
        },
        "resources": {"device": "auto", "precision": "auto", "compile": "off", "time_limit_seconds": None},
        "constraints": {
            "max_parameters": None,
            "max_multiply_adds": None,
            "penalty_weight": 0.3,
            "network": {"cells": None, "init_channels": None, "auxiliary": None},
        },
        "method": {"name": "darts"},
    }
    assert SearchConfig.from_spec(json.loads(json.dumps(spec))) == config
    assert isinstance(SearchConfig.from_spec({"training": {"weight_lr": 1}}).training.weight_lr, float)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"training": {"epochs": 0}}, r"training.epochs: Input should be greater than or equal to 1 \(got 0"),
        ({"training": {"epochs": 1001}}, "training.epochs: Input should be less than or equal to 1000"),
        ({"training": {"epochs": 2.5}}, "training.epochs: Input should be a valid integer"),
        ({"training": {"epochs": True}}, "training.epochs: Input should be a valid integer"),
        ({"training": {"epochs": "3"}}, "training.epochs: Input should be a valid integer"),
        ({"training": {"batch_size": 0}}, "training.batch_size: Input should be greater than or equal to 1"),
        ({"training": {"train_portion": 1.0}}, "training.train_portion: Input should be less than 1"),
        ({"training": {"train_portion": 0}}, "training.train_portion: Input should be greater than 0"),
        ({"training": {"order": "third"}}, "training.order: Input should be 'first' or 'second'"),
        ({"training": {"weight_lr": -1}}, "training.weight_lr: Input should be greater than 0"),
        (
            {"training": {"weight_lr": 0.01, "weight_lr_min": 0.1}},
            r"training: weight_lr_min \(0.1\) must be <= weight_lr \(0.01\)",
        ),
        ({"training": {"momentum": 1.0}}, "training.momentum: Input should be less than 1"),
        ({"training": {"momentum": True}}, "training.momentum: must be a finite number, got True"),
        ({"training": {"arch_lr": "fast"}}, "training.arch_lr: must be a finite number, got 'fast'"),
        ({"training": {"arch_lr": "0.1"}}, "training.arch_lr: must be a finite number"),
        ({"training": {"grad_clip": float("nan")}}, "training.grad_clip: Input should be a finite number"),
        ({"training": {"grad_clip": float("inf")}}, "training.grad_clip: Input should be a finite number"),
        ({"training": {"seed": -1}}, "training.seed: Input should be greater than or equal to 0"),
        ({"training": {"seed": 2**32}}, "training.seed: Input should be less than or equal to 4294967295"),
        ({"training": {"lr": 0.1}}, "training.lr: is not a known field"),
        ({"network": {"cells": 0}}, "network.cells: Input should be greater than or equal to 1"),
        ({"network": {"init_channels": 513}}, "network.init_channels: Input should be less than or equal"),
        ({"network": [1, 2]}, "network: must be a JSON object"),
        (
            {"search_space": {"primitives": ["none", "conv_7x7"]}},
            r"search_space.primitives\[1\]: Input should be 'none', 'max_pool_3x3'",
        ),
        ({"search_space": {"primitives": ["skip_connect"]}}, "search_space.primitives: .*at least 2 items"),
        ({"search_space": {"primitives": ["skip_connect"] * 2}}, "search_space.primitives: must not repeat"),
        ({"search_space": {"primitives": "skip_connect"}}, "search_space.primitives: Input should be a"),
        ({"search_space": {"internal_nodes": 0}}, "search_space.internal_nodes: Input should be greater"),
        ({"search_space": {"internal_nodes": 9}}, "search_space.internal_nodes: Input should be less"),
        ({"search_space": {"primitives": list(DARTS_OP_NAMES) * 2}}, "search_space.primitives: .*at most 8"),
        ({"resources": {"device": "tpu"}}, "resources.device: Input should be 'auto', 'cpu' or 'cuda'"),
        ({"optimizer": {}}, "optimizer: is not a known field"),
    ],
)
def test_from_spec_rejects_bad_values_naming_the_field(spec: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchConfig.from_spec(spec)


# --------------------------------------------------------------------------------------------- run_search

TINY_SPEC = {
    "search_space": {
        "primitives": ["none", "max_pool_3x3", "skip_connect", "dil_conv_3x3"],
        "internal_nodes": 2,
    },
    "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
    "training": {"epochs": 2, "batch_size": 8, "seed": 7, "arch_lr": 0.01},
    "resources": {"device": "cpu"},
}


def tiny_config(method: dict | None = None, **sections: dict) -> SearchConfig:
    """The config of :data:`TINY_SPEC` with each of ``sections`` merged into its section, and ``method``
    as its method section when given."""
    spec = copy.deepcopy(TINY_SPEC)
    for name, values in sections.items():
        spec.setdefault(name, {}).update(values)
    if method is not None:
        spec["method"] = method
    return SearchConfig.from_spec(spec)


def _config(**training) -> SearchConfig:
    return tiny_config(training=training)


def _load_checkpoint(directory) -> dict:
    return torch.load(directory / CHECKPOINT_NAME, weights_only=True)


def _assert_same_state(a, b) -> None:
    """Recursively: tensors torch.equal, everything else ==."""
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_same_state(a[key], b[key])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_same_state(x, y)
    else:
        assert a == b


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in item.items() if key != "seconds"} for item in history]


def test_on_epoch_payload_and_checkpoint(tiny_dataset, tmp_path) -> None:
    reported: list[EpochResult] = []
    result = run_search(tiny_dataset, _config(), checkpoint_dir=tmp_path, on_epoch=reported.append)

    assert not result.stopped and result.epochs_completed == 2
    assert [item.epoch for item in reported] == [1, 2] and result.history == reported
    assert result.genotype == reported[-1].genotype
    payload = reported[0].to_dict()
    assert list(payload) == [
        "epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "seconds", "genotype", "alphas",
        "skip_connections", "parameter_free_ops", "alpha_entropy", "hessian_eigenvalue", "cost", "method",
        "schedule",
    ]  # fmt: skip
    assert json.loads(json.dumps(payload)) == payload
    assert payload["lr"] == pytest.approx(0.025) and reported[1].lr < reported[0].lr  # cosine over 2 epochs
    for key in ("train_acc", "valid_acc"):
        assert 0.0 <= payload[key] <= 1.0
    assert payload["train_loss"] > 0 and payload["valid_loss"] > 0 and payload["seconds"] > 0
    Genotype.from_json(payload["genotype"])
    assert set(payload["alphas"]) == {"normal", "reduce"}
    for rows in payload["alphas"].values():
        assert len(rows) == num_edges(2) and all(len(row) == 4 for row in rows)
        assert all(sum(row) == pytest.approx(1.0) for row in rows)
    assert EpochResult.from_dict(payload) == reported[0]

    checkpoint = _load_checkpoint(tmp_path)  # weights_only: no pickled code in a service's checkpoint
    assert checkpoint["epoch"] == 2 and checkpoint["history"] == [item.to_dict() for item in reported]
    assert read_history(tmp_path) == checkpoint["history"]
    assert [EpochRecord.model_validate(record).epoch for record in read_history(tmp_path)] == [1, 2]
    previous = torch.load(tmp_path / PREVIOUS_CHECKPOINT_NAME, weights_only=True)
    assert previous["epoch"] == 1 and previous["history"] == checkpoint["history"][:1]
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == sorted([CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME])  # two generations, no temp files

    # A finished search asked to run again only reports what it has.
    again = run_search(tiny_dataset, _config(), checkpoint_dir=tmp_path, on_epoch=reported.append)
    assert again.epochs_completed == 2 and len(reported) == 2 and again.history == result.history


@pytest.mark.parametrize(
    "method",
    [
        {"name": "darts"},
        {"name": "gdas"},
        {"name": "beta_darts", "lambda_start": 1.0},
        {"name": "sdarts_rs"},
        {"name": "sdarts_adv", "attack_steps": 2},
        {"name": "drnas", "regularizer": "kl"},
        {"name": "darts_minus"},
        {"name": "random_ws", "candidates": 8, "finalists": 2, "epoch_candidates": 3},
        {"name": "fair_darts", "threshold": 0.5},
    ],
    ids=lambda method: method["name"],
)
def test_resume_after_stop_is_bit_identical_to_an_uninterrupted_search(
    tiny_dataset, tmp_path, method
) -> None:
    # Second order (the step with the most state) where the method allows it: DARTS, beta-DARTS, DARTS-.
    order = "second" if method["name"] in ("darts", "beta_darts", "darts_minus") else "first"
    config = _config(order=order).replace(method=method)
    run_search(tiny_dataset, config, checkpoint_dir=tmp_path / "straight")

    finished: list[int] = []
    first = run_search(
        tiny_dataset,
        config,
        checkpoint_dir=tmp_path / "resumed",
        on_epoch=lambda item: finished.append(item.epoch),
        should_stop=lambda: bool(finished),  # stop as soon as epoch 1 is reported
    )
    assert (
        first.stopped and first.epochs_completed == 1 and _load_checkpoint(tmp_path / "resumed")["epoch"] == 1
    )
    torch.manual_seed(12345)  # the resumed search must not depend on the caller's RNG state
    second = run_search(
        tiny_dataset, config, checkpoint_dir=tmp_path / "resumed", on_epoch=lambda i: finished.append(i.epoch)
    )
    assert not second.stopped and second.epochs_completed == 2 and finished == [1, 2]

    straight, resumed = _load_checkpoint(tmp_path / "straight"), _load_checkpoint(tmp_path / "resumed")
    _assert_same_state(straight["search"], resumed["search"])  # network, alphas, optimizers, schedule
    _assert_same_state(straight["rng"], resumed["rng"])
    assert _without_seconds(straight["history"]) == _without_seconds(resumed["history"])


def test_should_stop_returns_promptly_without_recording_the_unfinished_epoch(tiny_dataset, tmp_path) -> None:
    polls_after_report: list[int] = []
    reported: list[EpochResult] = []

    def should_stop() -> bool:
        if reported:
            polls_after_report.append(1)
        return len(polls_after_report) > 1  # stop before the second step of epoch 2

    result = run_search(
        tiny_dataset,
        _config(epochs=3),
        checkpoint_dir=tmp_path,
        on_epoch=reported.append,
        should_stop=should_stop,
    )
    assert result.stopped and result.epochs_completed == 1 and len(result.history) == 1
    assert len(polls_after_report) == 2 and [item.epoch for item in reported] == [1]
    assert _load_checkpoint(tmp_path)["epoch"] == 1

    # 3 steps per epoch; the 4th poll comes from the validation pass: epoch 1 is not finished.
    polls: list[int] = []
    during_validation = run_search(
        tiny_dataset,
        _config(),
        checkpoint_dir=tmp_path / "fresh",
        should_stop=lambda: len(polls.append(1) or polls) > 3,
    )
    assert during_validation.stopped and during_validation.history == [] and len(polls) == 4
    assert not (tmp_path / "fresh" / CHECKPOINT_NAME).exists()

    nothing = run_search(tiny_dataset, _config(), should_stop=lambda: True)
    assert nothing.stopped and nothing.epochs_completed == 0 and nothing.history == []
    assert isinstance(nothing.genotype, Genotype)


def test_checkpoint_of_another_spec_or_too_little_data_is_refused(tiny_dataset, tmp_path) -> None:
    run_search(tiny_dataset, _config(epochs=1), checkpoint_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"different search spec: training.epochs \(1 in the checkpoint, 2 now\)"
    ):
        run_search(tiny_dataset, _config(epochs=2), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="training.batch_size .32. is larger than the search-train split"):
        run_search(tiny_dataset, _config(batch_size=32))


def test_channels_last_is_the_default_and_state_dicts_load_across_memory_formats() -> None:
    generator = torch.Generator().manual_seed(5)
    train, valid = _batch(generator), _batch(generator)
    channels_last = DartsSearch(_tiny(), order="first")
    assert channels_last.network.stem_a[0].weight.is_contiguous(memory_format=torch.channels_last)
    plain = DartsSearch(_tiny(seed=7), order="first", channels_last=False)
    assert plain.network.stem_a[0].weight.is_contiguous()
    channels_last.step(train, valid)

    plain.load_state_dict(channels_last.state_dict())
    loaded, saved = plain.network.state_dict(), channels_last.network.state_dict()
    assert loaded.keys() == saved.keys()
    for name in saved:
        assert torch.equal(loaded[name], saved[name]), name
    assert plain.network.stem_a[0].weight.is_contiguous()  # the loaded values, in its own format
    got, want = plain.step(train, valid).to_floats(), channels_last.step(train, valid).to_floats()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-5), key
