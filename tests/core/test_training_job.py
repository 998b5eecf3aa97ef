"""run_training_job: bit-identical resume, checkpoint fallback and refusal, the validation split, stopping."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import darts_core
from darts_core.checkpoint import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, read_history, write_checkpoint
from darts_core.data.registry import ImageDataset, load_dataset
from darts_core.nn.multiply_adds import count_multiply_adds
from darts_core.spec.genotype import DARTS_V2, Genotype
from darts_core.spec.training_spec import TrainingJobConfig
from darts_core.train import job as training_job
from darts_core.train.job import run_training_job, validation_split
from darts_core.train.records import TrainEpoch, TrainingDiverged, TrainingStopped, TrainResult

SMALL = Genotype(
    normal=[("sep_conv_3x3", 0), ("skip_connect", 1), ("dil_conv_3x3", 2), ("avg_pool_3x3", 0)],
    reduce=[("max_pool_3x3", 0), ("sep_conv_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1)],
)


def _config(**training: object) -> TrainingJobConfig:
    """A tiny training with every source of randomness on: drop-path, auxiliary head, cutout."""
    return TrainingJobConfig.from_spec(
        {
            "network": {"init_channels": 4, "cells": 3, "auxiliary": True, "drop_path_prob": 0.3},
            "training": {"epochs": 3, "batch_size": 16, "cutout": True, "valid_fraction": 0.2, **training},
            "resources": {"device": "cpu"},
        }
    )


@pytest.fixture(scope="module")
def synthetic() -> ImageDataset:
    spec = {"num_samples": 120, "channels": 3, "image_size": 8, "num_classes": 4, "noise": 0.3, "seed": 1}
    return load_dataset({"name": "synthetic", **spec})


@pytest.fixture(scope="module")
def uninterrupted(synthetic: ImageDataset) -> TrainResult:
    return run_training_job(SMALL, _config(), synthetic)


def _without_seconds(history: list[TrainEpoch]) -> list[dict]:
    return [{**record.to_dict(), "seconds": None} for record in history]


def _assert_same_run(result: TrainResult, reference: TrainResult) -> None:
    assert _without_seconds(result.history) == _without_seconds(reference.history)
    reference_parameters = dict(reference.network.named_parameters())
    for name, parameter in result.network.named_parameters():
        assert torch.equal(parameter, reference_parameters[name]), name
    for name, buffer in result.network.named_buffers():
        assert torch.equal(buffer, dict(reference.network.named_buffers())[name]), name


def _stop_after_epoch(epoch: int) -> tuple[list[TrainEpoch], Callable[[], bool]]:
    """An on_epoch that records, and a should_stop that fires at the first poll after ``epoch``."""
    seen: list[TrainEpoch] = []
    return seen, lambda: bool(seen) and seen[-1].epoch >= epoch


def test_result_fields(uninterrupted: TrainResult, synthetic: ImageDataset) -> None:
    history = uninterrupted.history
    assert [record.epoch for record in history] == [1, 2, 3]
    for record in history:
        assert record.valid_acc is not None and 0.0 <= record.valid_acc <= 1.0
        assert record.valid_loss is not None and math.isfinite(record.valid_loss)
    assert uninterrupted.valid_accuracy == history[-1].valid_acc
    assert uninterrupted.test_accuracy == history[-1].test_acc
    assert uninterrupted.multiply_adds == count_multiply_adds(uninterrupted.network, (3, 8, 8))
    assert uninterrupted.multiply_adds > 0
    summary = uninterrupted.to_dict()
    assert summary["valid_accuracy"] == uninterrupted.valid_accuracy
    assert summary["multiply_adds"] == uninterrupted.multiply_adds
    assert summary["parameters"] == uninterrupted.parameters


def test_resume_after_a_stop_is_bit_identical(
    tmp_path: Path, synthetic: ImageDataset, uninterrupted: TrainResult
) -> None:
    seen, stop = _stop_after_epoch(1)
    with pytest.raises(TrainingStopped) as stopped:
        run_training_job(
            SMALL, _config(), synthetic, checkpoint_dir=tmp_path, on_epoch=seen.append, should_stop=stop
        )
    assert stopped.value.epochs_completed == 1
    # Nothing of the unfinished epoch 2 was written: one generation, one record.
    assert sorted(path.name for path in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    assert [record["epoch"] for record in read_history(tmp_path)] == [1]

    torch.manual_seed(1234)  # the caller's RNG in between must not matter
    reported: list[TrainEpoch] = []
    resumed = run_training_job(SMALL, _config(), synthetic, checkpoint_dir=tmp_path, on_epoch=reported.append)
    assert [record.epoch for record in reported] == [2, 3]  # restored epochs are not reported again
    _assert_same_run(resumed, uninterrupted)
    assert read_history(tmp_path) == [record.to_dict() for record in resumed.history]


def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path: Path, synthetic: ImageDataset, uninterrupted: TrainResult
) -> None:
    seen, stop = _stop_after_epoch(2)
    with pytest.raises(TrainingStopped):
        run_training_job(
            SMALL, _config(), synthetic, checkpoint_dir=tmp_path, on_epoch=seen.append, should_stop=stop
        )
    latest = tmp_path / CHECKPOINT_NAME
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
    assert [record["epoch"] for record in read_history(tmp_path)] == [1]  # read from the previous one
    resumed = run_training_job(SMALL, _config(), synthetic, checkpoint_dir=tmp_path)
    _assert_same_run(resumed, uninterrupted)


def test_a_finished_checkpoint_is_returned_without_training(tmp_path: Path, synthetic: ImageDataset) -> None:
    run_training_job(SMALL, _config(epochs=1), synthetic, checkpoint_dir=tmp_path)
    assert [record["epoch"] for record in read_history(tmp_path)] == [1]
    assert not (tmp_path / PREVIOUS_CHECKPOINT_NAME).exists()
    # Nothing is left to run, so should_stop is never polled.
    again = run_training_job(
        SMALL, _config(epochs=1), synthetic, checkpoint_dir=tmp_path, should_stop=lambda: True
    )
    assert len(again.history) == 1 and again.test_accuracy == again.history[0].test_acc


def test_a_checkpoint_of_another_training_is_refused(tmp_path: Path, synthetic: ImageDataset) -> None:
    run_training_job(SMALL, _config(epochs=1), synthetic, checkpoint_dir=tmp_path)
    expected = r"different training: training\.seed \(0 in the checkpoint, 5 now\)"
    with pytest.raises(ValueError, match=expected):
        run_training_job(SMALL, _config(epochs=1, seed=5), synthetic, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"different training: genotype\.normal"):
        run_training_job(DARTS_V2, _config(epochs=1), synthetic, checkpoint_dir=tmp_path)
    # Another device is the same training.
    spec = {**_config(epochs=1).to_spec(), "resources": {"device": "auto"}}
    other = TrainingJobConfig.from_spec(spec)
    run_training_job(SMALL, other, synthetic, checkpoint_dir=tmp_path, device="cpu")

    search_dir = tmp_path / "search"
    search_dir.mkdir()
    write_checkpoint({"format": 1, "epoch": 1, "history": []}, search_dir)
    with pytest.raises(ValueError, match="not a training checkpoint"):
        run_training_job(SMALL, _config(epochs=1), synthetic, checkpoint_dir=search_dir)


def test_the_validation_split_is_stratified_and_independent_of_the_seed(
    synthetic: ImageDataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    digits = load_dataset({"name": "digits"})
    labels = digits.y_train
    torch.manual_seed(0)
    train, valid = validation_split(labels, 0.1)
    torch.manual_seed(99)
    assert all(torch.equal(a, b) for a, b in zip((train, valid), validation_split(labels, 0.1), strict=True))
    assert sorted(torch.cat([train, valid]).tolist()) == list(range(labels.numel()))
    for label in range(10):
        members = int((labels == label).sum())
        assert int((labels[valid] == label).sum()) == math.floor(0.1 * members + 0.5)
    train_all, valid_none = validation_split(labels, 0.0)
    assert torch.equal(train_all, torch.arange(labels.numel())) and valid_none.numel() == 0
    with pytest.raises(ValueError, match="valid_fraction"):
        validation_split(labels[:3], 0.1)  # 3 samples: no class gives a validation sample

    # Trainings of other seeds and genotypes validate on the same examples.
    splits: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = training_job.validation_split

    def recording(*args: object) -> tuple[torch.Tensor, torch.Tensor]:
        splits.append(original(*args))
        return splits[-1]

    monkeypatch.setattr(training_job, "validation_split", recording)
    for genotype, seed in ((SMALL, 0), (DARTS_V2, 7)):
        result = run_training_job(genotype, _config(epochs=1, seed=seed), synthetic)
        assert result.valid_accuracy is not None
    assert torch.equal(splits[0][1], splits[1][1])
    counts = torch.bincount(synthetic.y_train).tolist()
    assert splits[0][1].numel() == sum(math.floor(0.2 * count + 0.5) for count in counts)


def test_no_validation_split_gives_none_and_json_safe_records(synthetic: ImageDataset) -> None:
    result = run_training_job(SMALL, _config(epochs=1, valid_fraction=0.0), synthetic)
    assert result.valid_accuracy is None and result.history[0].valid_acc is None
    assert result.to_dict()["valid_accuracy"] is None
    diverged = dataclasses.replace(result.history[0], train_loss=math.nan, test_loss=math.inf)
    record = diverged.to_dict()
    assert record["train_loss"] is None and record["test_loss"] is None and record["valid_loss"] is None
    back = TrainEpoch.from_dict(record)
    assert math.isnan(back.train_loss) and back.valid_acc is None and back.epoch == 1


def test_a_diverging_training_fails_before_recording_the_epoch(
    tmp_path: Path, synthetic: ImageDataset
) -> None:
    """A learning rate far too high makes the loss NaN in the first epoch: a ValueError naming the epoch,
    with nothing checkpointed or reported (a non-finite loss could not be stored by the service)."""
    config = TrainingJobConfig.from_spec(
        {
            "network": {"init_channels": 4, "cells": 3},
            "training": {"epochs": 2, "batch_size": 16, "lr": 10.0, "momentum": 0.99, "weight_decay": 0.0,
                         "grad_clip": None},
            "resources": {"device": "cpu"},
        }
    )
    reported: list[TrainEpoch] = []
    with pytest.raises(ValueError, match=r"training diverged at epoch 1: non-finite loss") as caught:
        run_training_job(SMALL, config, synthetic, checkpoint_dir=tmp_path, on_epoch=reported.append)
    assert isinstance(caught.value, TrainingDiverged) and caught.value.epoch == 1
    assert reported == [] and read_history(tmp_path) == []


def test_bad_arguments_are_rejected(synthetic: ImageDataset) -> None:
    with pytest.raises(ValueError, match="config must be a TrainingJobConfig"):
        run_training_job(SMALL, {"training": {}}, synthetic)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="genotype must be a Genotype"):
        run_training_job(SMALL.to_json(), _config(), synthetic)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="device"):
        run_training_job(SMALL, _config(), synthetic, device="tpu")


@pytest.mark.slow
def test_darts_v2_on_digits_reaches_097_with_the_defaults() -> None:
    """The issue's figure: DARTS_V2 with the default training spec, >= 0.97 held-out test accuracy.

    About 25 s on two idle cores (80 s on a loaded machine): the time is printed, not asserted.
    """
    digits = load_dataset({"name": "digits"})
    config = TrainingJobConfig.from_spec({"resources": {"device": "cpu"}})
    started = time.perf_counter()
    result = darts_core.run_training_job(DARTS_V2, config, digits)
    seconds = time.perf_counter() - started
    print(
        f"digits retraining: test {result.test_accuracy:.4f}, valid {result.valid_accuracy:.4f}, "
        f"{result.parameters} parameters, {result.multiply_adds} multiply-adds, {seconds:.1f} s"
    )
    assert result.test_accuracy >= 0.97
