"""darts_core.estimate: the exact weight count and the step-memory estimates against measured steps."""

from __future__ import annotations

import pytest
import torch

from darts_core.estimate import (
    count_weights,
    estimate_search,
    estimate_training,
    measure_hessian,
    measure_step,
    measure_training_step,
)
from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.nn.search_network import SearchNetwork
from darts_core.search.loop import SearchConfig
from darts_core.spec.genotype import DARTS_V2
from darts_core.spec.training_spec import TrainingJobConfig


@pytest.mark.parametrize(
    "sizes",
    [
        {},
        {"cells": 1},
        {"cells": 2, "stem_multiplier": 1, "init_channels": 6},
        {
            "cells": 5,
            "init_channels": 8,
            "internal_nodes": 3,
            "primitives": ("none", "max_pool_3x3", "skip_connect"),
        },
        {"cells": 7, "internal_nodes": 1, "primitives": ("sep_conv_3x3", "none")},
        {"cells": 5, "init_channels": 8, "partial_channels": 4, "edge_normalization": True},
        {"cells": 3, "init_channels": 6, "internal_nodes": 2, "partial_channels": 2},
    ],
)
def test_weight_count_is_the_supernets_exact_count(sizes: dict) -> None:
    arguments = {**sizes, "primitives": list(sizes["primitives"])} if "primitives" in sizes else sizes
    with torch.device("meta"):
        network = SearchNetwork(3, 10, **arguments)
    expected = sum(p.numel() for p in network.weight_parameters())
    expected_arch = sum(p.numel() for p in network.arch_parameters())
    assert count_weights(3, 10, **sizes) == (expected, expected_arch)


def test_the_largest_allowed_supernet_is_counted_without_memory() -> None:
    weights, _ = count_weights(3, 10, cells=64, init_channels=512, internal_nodes=8)
    assert weights > 10**10  # tens of billions: what admission control must refuse


# Three sizes: channels, depth, nodes, primitives and image size all vary.
MEASURED_SIZES = [
    ({"network": {"cells": 3, "init_channels": 4}, "search_space": {"internal_nodes": 2}}, 4, (12, 12)),
    ({"network": {"cells": 5, "init_channels": 8}}, 6, (16, 16)),
    (
        {
            "network": {"cells": 8, "init_channels": 8, "stem_multiplier": 2},
            "search_space": {
                "internal_nodes": 3,
                "primitives": ["none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_5x5"],
            },
        },
        8,
        (15, 13),
    ),
]


@pytest.mark.parametrize("order", ["first", "second"])
@pytest.mark.parametrize(("spec", "batch_size", "image_size"), MEASURED_SIZES)
def test_step_memory_estimate_is_within_25_percent_of_a_measured_step(
    spec: dict, batch_size: int, image_size: tuple[int, int], order: str
) -> None:
    config = SearchConfig.from_spec({**spec, "training": {"batch_size": batch_size, "order": order}})
    estimate = estimate_search(config, in_channels=3, image_size=image_size, num_classes=5)
    measured = measure_step(config, in_channels=3, image_size=image_size, num_classes=5)
    assert estimate.state_bytes == measured["state_bytes"]
    estimated = estimate.state_bytes + estimate.saved_bytes
    actual = measured["state_bytes"] + measured["saved_bytes"]
    assert abs(estimated - actual) <= 0.25 * actual, (estimated, actual)
    # The whole step figure adds the batches and the backward workspace on top, never less.
    assert estimate.step_bytes > estimated


# PC-DARTS: partial channels with and without edge normalization, and edge normalization alone.
MEASURED_PC_SIZES = [
    (
        {
            "network": {"cells": 3, "init_channels": 8},
            "search_space": {"internal_nodes": 2, "partial_channels": 2, "edge_normalization": True},
        },
        4,
        (12, 12),
    ),
    ({"network": {"cells": 5, "init_channels": 8}, "search_space": {"partial_channels": 4}}, 6, (16, 16)),
    (
        {"network": {"cells": 5, "init_channels": 8}, "search_space": {"edge_normalization": True}},
        6,
        (16, 16),
    ),
]


@pytest.mark.parametrize("order", ["first", "second"])
@pytest.mark.parametrize(("spec", "batch_size", "image_size"), MEASURED_PC_SIZES)
def test_pc_darts_step_memory_estimate_is_within_25_percent_of_a_measured_step(
    spec: dict, batch_size: int, image_size: tuple[int, int], order: str
) -> None:
    test_step_memory_estimate_is_within_25_percent_of_a_measured_step(spec, batch_size, image_size, order)


def test_the_estimate_shrinks_with_partial_channels() -> None:
    def saved(k: int) -> int:
        spec = {"search_space": {"partial_channels": k, "edge_normalization": k > 1}}
        config = SearchConfig.from_spec({**spec, "training": {"batch_size": 64}})
        result = estimate_search(config, in_channels=3, image_size=(32, 32), num_classes=10)
        return result.saved_bytes

    darts, k2, k4 = saved(1), saved(2), saved(4)
    assert k4 < k2 < darts
    assert k4 < 0.4 * darts  # the benchmark measures 0.12x the DARTS reference, 0.33x darts_core


def test_the_estimate_grows_with_the_batch_and_counts_the_dataset() -> None:
    small = SearchConfig.from_spec({"training": {"batch_size": 8}})
    large = SearchConfig.from_spec({"training": {"batch_size": 64}})
    first = estimate_search(small, in_channels=1, image_size=(8, 8), num_classes=10, num_samples=1797)
    second = estimate_search(large, in_channels=1, image_size=(8, 8), num_classes=10)
    assert second.saved_bytes > 7 * first.saved_bytes
    assert first.dataset_bytes == 2 * 4 * 1797 * 64 and second.dataset_bytes == 0
    assert first.peak_bytes == first.step_bytes + first.dataset_bytes


# Retraining: three sizes; auxiliary head, drop-path, momentum and image size vary.
TRAINING_SIZES = [
    ({"network": {"init_channels": 4, "cells": 3}, "training": {"batch_size": 8}}, (3, 12, 12)),
    (
        {"network": {"init_channels": 8, "cells": 5, "auxiliary": True}, "training": {"batch_size": 6}},
        (1, 16, 16),
    ),
    (
        {"network": {"init_channels": 6, "cells": 8, "drop_path_prob": 0.0},
         "training": {"batch_size": 4, "momentum": 0.0}},
        (3, 15, 13),
    ),
]  # fmt: skip


@pytest.mark.parametrize(("spec", "input_shape"), TRAINING_SIZES)
def test_training_estimate_is_within_10_percent_of_a_measured_step(spec: dict, input_shape: tuple) -> None:
    config = TrainingJobConfig.from_spec(spec)
    estimate = estimate_training(config, input_shape, 5, DARTS_V2)
    measured = measure_training_step(config, input_shape, 5, DARTS_V2)
    assert estimate.arch_weights == 0
    assert estimate.state_bytes == measured["state_bytes"]
    assert abs(estimate.saved_bytes - measured["saved_bytes"]) <= 0.10 * measured["saved_bytes"], (
        estimate.saved_bytes, measured["saved_bytes"])  # fmt: skip
    assert estimate.step_bytes > estimate.state_bytes + estimate.saved_bytes


def test_training_estimate_counts_weights_batch_and_dataset() -> None:
    small = TrainingJobConfig.from_spec({"network": {"auxiliary": True}, "training": {"batch_size": 8}})
    large = TrainingJobConfig.from_spec({"network": {"auxiliary": True}, "training": {"batch_size": 64}})
    first = estimate_training(small, (1, 8, 8), 10, DARTS_V2, num_samples=1797)
    second = estimate_training(large, (1, 8, 8), 10, DARTS_V2)
    network = GenotypeNetwork(DARTS_V2, 1, 10, init_channels=16, cells=5, auxiliary=True)
    assert first.weights == second.weights == sum(p.numel() for p in network.parameters())
    assert second.saved_bytes > 7 * first.saved_bytes
    assert first.dataset_bytes == 2 * 4 * 1797 * 64 and second.dataset_bytes == 0
    assert first.peak_bytes == first.step_bytes + first.dataset_bytes
    # The DARTS CIFAR-10 network is estimated without allocating it (gigabytes of activations).
    cifar = TrainingJobConfig.from_spec(
        {"network": {"init_channels": 36, "cells": 20, "auxiliary": True}, "training": {"batch_size": 96}}
    )
    assert estimate_training(cifar, (3, 32, 32), 10, DARTS_V2).saved_bytes > 2**32
    with pytest.raises(ValueError, match="input_shape"):
        estimate_training(small, (8, 8), 10, DARTS_V2)


@pytest.mark.parametrize(("spec", "batch_size", "image_size"), MEASURED_SIZES[:2])
def test_the_estimate_holds_for_the_autocast_path_too(
    spec: dict, batch_size: int, image_size: tuple[int, int]
) -> None:
    """Under bf16 autocast (the CUDA default) the recomputing Functions are off (max-pool indices and
    depthwise outputs kept) and the convolutions keep bf16: measured on CPU's autocast, the same figure
    holds within the same 25 %."""
    config = SearchConfig.from_spec({**spec, "training": {"batch_size": batch_size}})
    estimate = estimate_search(config, in_channels=3, image_size=image_size, num_classes=5)
    measured = measure_step(
        config, in_channels=3, image_size=image_size, num_classes=5, autocast_dtype=torch.bfloat16
    )
    assert estimate.state_bytes == measured["state_bytes"]
    estimated = estimate.state_bytes + estimate.saved_bytes
    actual = measured["state_bytes"] + measured["saved_bytes"]
    assert abs(estimated - actual) <= 0.25 * actual, (estimated, actual)


def test_the_hessian_pass_is_estimated_and_covers_its_measured_peak() -> None:
    """`training.hessian_every` adds the eigenvalue pass (recomputation off, the gradient's graph kept for
    double backward): its estimate is at least what the pass allocates at its peak, measured on CPU,
    and it can be the search's peak."""
    spec = {"network": {"cells": 3, "init_channels": 4}, "search_space": {"internal_nodes": 2}}
    plain = SearchConfig.from_spec({**spec, "training": {"batch_size": 4}})
    config = SearchConfig.from_spec({**spec, "training": {"batch_size": 4, "hessian_every": 1}})
    without = estimate_search(plain, in_channels=3, image_size=(8, 8), num_classes=5)
    estimate = estimate_search(config, in_channels=3, image_size=(8, 8), num_classes=5)
    assert without.hessian_bytes == 0 and without.peak_bytes == without.step_bytes
    measured = measure_hessian(config, in_channels=3, image_size=(8, 8), num_classes=5)
    assert measured > estimate.saved_bytes  # more than a step keeps: the pass matters
    assert estimate.hessian_bytes >= measured, (estimate.hessian_bytes, measured)
    assert estimate.peak_bytes == max(estimate.step_bytes, estimate.state_bytes + estimate.hessian_bytes)
    assert estimate.peak_bytes > without.peak_bytes


def test_gdas_needs_much_less_memory_and_the_estimate_bounds_a_measured_step() -> None:
    spec = {"network": {"cells": 5, "init_channels": 8}, "training": {"batch_size": 6}}
    darts = SearchConfig.from_spec(spec)
    gdas = darts.replace(method={"name": "gdas"})
    shape = {"in_channels": 3, "image_size": (16, 16), "num_classes": 5}
    darts_estimate, gdas_estimate = estimate_search(darts, **shape), estimate_search(gdas, **shape)
    assert gdas_estimate.saved_bytes < 0.5 * darts_estimate.saved_bytes  # 0.43 here
    measured = measure_step(gdas, **shape)
    # An upper bound: every edge counted at its most memory-hungry operation, every weight with a gradient
    # (the sampled step leaves the unsampled operations' weights without gradients and momenta).
    assert measured["state_bytes"] <= gdas_estimate.state_bytes
    assert measured["saved_bytes"] <= gdas_estimate.saved_bytes
    assert measured["saved_bytes"] < 0.35 * measure_step(darts, **shape)["saved_bytes"]


def test_random_ws_needs_much_less_memory_and_the_estimate_bounds_a_measured_step() -> None:
    spec = {"network": {"cells": 5, "init_channels": 8}, "training": {"batch_size": 6}}
    darts = SearchConfig.from_spec(spec)
    random_ws = darts.replace(method={"name": "random_ws"})
    shape = {"in_channels": 3, "image_size": (16, 16), "num_classes": 5}
    darts_estimate, random_estimate = estimate_search(darts, **shape), estimate_search(random_ws, **shape)
    gdas_estimate = estimate_search(darts.replace(method={"name": "gdas"}), **shape)
    # Two of each node's inputs run, one operation each: less than GDAS's one operation on every edge.
    assert random_estimate.saved_bytes < gdas_estimate.saved_bytes < 0.5 * darts_estimate.saved_bytes
    measured = measure_step(random_ws, **shape)
    # An upper bound: each node's two most memory-hungry inputs at their most memory-hungry operation.
    assert measured["state_bytes"] <= random_estimate.state_bytes
    assert measured["saved_bytes"] <= random_estimate.saved_bytes
    assert measured["saved_bytes"] < 0.25 * measure_step(darts, **shape)["saved_bytes"]


def test_fair_darts_is_estimated_as_first_order_darts_and_the_estimate_bounds_a_measured_step() -> None:
    # Sigmoid weights instead of softmax: every operation of every edge runs and keeps what DARTS keeps.
    spec = {"network": {"cells": 3, "init_channels": 4}, "training": {"batch_size": 4}}
    darts, shape = SearchConfig.from_spec(spec), {"in_channels": 3, "image_size": (8, 8), "num_classes": 5}
    fair = darts.replace(method={"name": "fair_darts"})
    assert estimate_search(fair, **shape) == estimate_search(darts, **shape)
    measured = measure_step(fair, **shape)
    assert measured["saved_bytes"] <= estimate_search(fair, **shape).saved_bytes
    assert measured["state_bytes"] <= estimate_search(fair, **shape).state_bytes
