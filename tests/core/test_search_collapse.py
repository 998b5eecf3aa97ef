"""run_search with the PC-DARTS options, the collapse metrics and the early-stop rules (issue 14)."""

from __future__ import annotations

import math

import pytest
import torch

from darts_core.data.registry import ImageDataset
from darts_core.search.collapse import skip_count
from darts_core.search.loop import EpochResult, run_search
from darts_core.spec.search_spec import SearchConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def _skip_friendly_dataset(size: int = 256) -> ImageDataset:
    """The label is the sign of the image's mean: an identity path carries all a classifier needs."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(size, 1, 8, 8, generator=generator)
    y = (x.mean(dim=(1, 2, 3)) > 0).long()
    return ImageDataset(
        name="skip-friendly", x_train=x, y_train=y, x_test=x[:16], y_test=y[:16], num_classes=2
    )


_TINY = {
    "search_space": {
        "primitives": ["none", "skip_connect", "sep_conv_3x3", "max_pool_3x3"],
        "internal_nodes": 2,
    },
    "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
    "resources": {"device": "cpu"},
}


def _spec(**training) -> SearchConfig:
    return SearchConfig.from_spec({**_TINY, "training": {"batch_size": 16, "seed": 0, **training}})


def test_a_collapsing_search_is_stopped_by_darts_plus_keeping_the_previous_genotype(tmp_path) -> None:
    config = _spec(epochs=8, arch_lr=0.1, early_stop="darts_plus", max_skip_connections=2)
    reported: list[EpochResult] = []
    result = run_search(_skip_friendly_dataset(), config, checkpoint_dir=tmp_path, on_epoch=reported.append)
    assert result.stopped_early and not result.stopped
    last = result.history[-1]
    assert result.epochs_completed == len(reported) == last.epoch < 8
    assert last.skip_connections == skip_count(last.genotype) >= 2
    assert all(item.skip_connections < 2 for item in result.history[:-1])
    kept = result.history[-2].genotype if len(result.history) > 1 else None
    assert kept is None or result.genotype == kept
    assert skip_count(result.genotype) < 2
    assert "darts_plus" in result.stop_reason and f"epoch {last.epoch}" in result.stop_reason
    # A restart from the checkpoint stops at once with the same decision.
    again = run_search(_skip_friendly_dataset(), config, checkpoint_dir=tmp_path)
    assert again.stopped_early and again.genotype == result.genotype
    assert again.epochs_completed == result.epochs_completed

    # The same search without the rule runs all its epochs, its normal cell full of skip connections.
    # Without the rule the same search (same schedule) goes on past that epoch with the same genotypes.
    seen: list[EpochResult] = []
    went_on = run_search(
        _skip_friendly_dataset(),
        config.replace(training={"early_stop": None}),
        on_epoch=seen.append,
        should_stop=lambda: len(seen) > last.epoch,
    )
    assert not went_on.stopped_early and went_on.epochs_completed == last.epoch + 1
    assert [item.genotype for item in seen[: last.epoch]] == [item.genotype for item in result.history]


def test_epochs_carry_collapse_metrics_and_the_eigenvalue_every_n_epochs() -> None:
    config = _spec(epochs=2, hessian_every=2)
    result = run_search(_skip_friendly_dataset(), config)
    first, second = result.history
    assert first.hessian_eigenvalue is None and second.hessian_eigenvalue is not None
    assert math.isfinite(second.hessian_eigenvalue)
    for item in result.history:
        assert 0 <= item.skip_connections <= item.parameter_free_ops <= 4
        assert 0 < item.alpha_entropy <= math.log(4) + 1e-9
        record = item.to_dict()
        assert EpochResult.from_dict(record) == item
        assert {"skip_connections", "parameter_free_ops", "alpha_entropy", "hessian_eigenvalue"} <= set(
            record
        )
    # Measuring the eigenvalue does not change the search (no RNG, no buffer, no gradient touched).
    plain = run_search(_skip_friendly_dataset(), config.replace(training={"hessian_every": None}))
    assert [r.valid_loss for r in plain.history] == [r.valid_loss for r in result.history]


def test_a_pc_darts_search_runs_and_resumes_bit_identically(tmp_path) -> None:
    config = SearchConfig.from_spec(
        {
            **_TINY,
            "search_space": {**_TINY["search_space"], "partial_channels": 2, "edge_normalization": True},
            "training": {"epochs": 2, "batch_size": 16, "order": "second"},
        }
    )
    data = _skip_friendly_dataset(64)
    straight = run_search(data, config)
    finished: list[int] = []
    interrupted = run_search(
        data,
        config,
        checkpoint_dir=tmp_path,
        on_epoch=lambda r: finished.append(r.epoch),
        should_stop=lambda: bool(finished),
    )
    assert interrupted.stopped and interrupted.epochs_completed == 1
    resumed = run_search(data, config, checkpoint_dir=tmp_path)
    assert [r.to_dict()["alphas"] for r in resumed.history] == [
        r.to_dict()["alphas"] for r in straight.history
    ]
    assert straight.history[-1].genotype == straight.genotype


def test_spec_validation_of_the_new_fields() -> None:
    with pytest.raises(ValueError, match="search_space.partial_channels"):
        SearchConfig.from_spec({"search_space": {"partial_channels": 3}})
    with pytest.raises(ValueError, match="hessian_every"):
        SearchConfig.from_spec({"training": {"early_stop": "eigenvalue"}})
    with pytest.raises(ValueError, match="training.early_stop"):
        SearchConfig.from_spec({"training": {"early_stop": "never"}})
    with pytest.raises(ValueError, match="training.eigenvalue_threshold"):
        SearchConfig.from_spec({"training": {"eigenvalue_threshold": 1.0}})
    spec = SearchConfig.from_spec({}).to_spec()
    assert (
        spec["search_space"]["partial_channels"] == 1 and spec["search_space"]["edge_normalization"] is False
    )
    assert spec["training"]["early_stop"] is None and spec["training"]["hessian_every"] is None
