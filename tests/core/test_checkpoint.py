"""darts_core.checkpoint: two generations, fallback on a damaged latest, temp files, a full disk."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch

from darts_core import checkpoint as ckpt
from darts_core.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    CheckpointDiskFull,
    has_checkpoint,
    load_checkpoint,
    read_history,
    write_checkpoint,
)
from darts_core.data.registry import load_dataset
from darts_core.search.loop import run_search
from darts_core.spec.search_spec import SearchConfig


def _state(epoch: int) -> dict:
    history = [{"epoch": number, "train_loss": 1.0 / number} for number in range(1, epoch + 1)]
    return {"format": CHECKPOINT_FORMAT, "epoch": epoch, "weights": torch.full((3,), float(epoch)),
            "history": history}  # fmt: skip


def test_writes_keep_the_previous_generation(tmp_path: Path) -> None:
    assert not has_checkpoint(tmp_path) and load_checkpoint(tmp_path) is None and read_history(tmp_path) == []
    write_checkpoint(_state(1), tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    write_checkpoint(_state(2), tmp_path)
    write_checkpoint(_state(3), tmp_path)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(
        [CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME]
    )
    state, path = load_checkpoint(tmp_path)
    assert path.name == CHECKPOINT_NAME and state["epoch"] == 3
    assert torch.load(tmp_path / PREVIOUS_CHECKPOINT_NAME, weights_only=True)["epoch"] == 2
    assert [record["epoch"] for record in read_history(tmp_path)] == [1, 2, 3]


def test_a_truncated_latest_falls_back_to_the_previous_generation(tmp_path: Path) -> None:
    write_checkpoint(_state(1), tmp_path)
    write_checkpoint(_state(2), tmp_path)
    latest = tmp_path / CHECKPOINT_NAME
    latest.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])

    state, path = load_checkpoint(tmp_path)
    assert path.name == PREVIOUS_CHECKPOINT_NAME and state["epoch"] == 1
    assert [record["epoch"] for record in read_history(tmp_path)] == [1]

    # Only the previous generation (a crash between the two renames): it is read.
    latest.unlink()
    assert load_checkpoint(tmp_path)[0]["epoch"] == 1

    # No generation readable: the error names the file.
    (tmp_path / PREVIOUS_CHECKPOINT_NAME).write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"checkpoint .*{PREVIOUS_CHECKPOINT_NAME} cannot be read"):
        load_checkpoint(tmp_path)


def test_a_search_resumes_from_the_previous_generation_when_the_latest_is_damaged(tmp_path: Path) -> None:
    dataset = load_dataset(
        {"name": "synthetic", "num_samples": 64, "channels": 1, "image_size": 6, "seed": 1}
    )
    spec = {
        "search_space": {"primitives": ["none", "skip_connect", "avg_pool_3x3"], "internal_nodes": 1},
        "network": {"cells": 1, "init_channels": 2, "stem_multiplier": 1},
        "training": {"epochs": 2, "batch_size": 8},
        "resources": {"device": "cpu"},
    }
    config = SearchConfig.from_spec(spec)
    straight = run_search(dataset, config, checkpoint_dir=tmp_path)
    latest = tmp_path / CHECKPOINT_NAME
    latest.write_bytes(latest.read_bytes()[:100])

    reported: list[int] = []
    resumed = run_search(
        dataset, config, checkpoint_dir=tmp_path, on_epoch=lambda item: reported.append(item.epoch)
    )
    assert reported == [2]  # epoch 1 came from checkpoint.prev.pt; epoch 2 was run again
    assert resumed.epochs_completed == 2
    assert resumed.history[0] == straight.history[0]
    assert [record["epoch"] for record in read_history(tmp_path)] == [1, 2]


def test_a_failed_write_leaves_no_temporary_file_and_the_old_generations(tmp_path: Path, monkeypatch) -> None:
    write_checkpoint(_state(1), tmp_path)
    write_checkpoint(_state(2), tmp_path)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt.torch, "save", disk_full)
    with pytest.raises(CheckpointDiskFull, match="disk full") as raised:
        write_checkpoint(_state(3), tmp_path)
    assert isinstance(raised.value, OSError) and raised.value.errno == errno.ENOSPC
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before

    def broken(obj, handle, *args, **kwargs):
        raise RuntimeError("serialisation failed")

    monkeypatch.setattr(ckpt.torch, "save", broken)
    with pytest.raises(RuntimeError, match="serialisation failed"):
        write_checkpoint(_state(3), tmp_path)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before


def test_temporary_files_are_unique_per_writer(tmp_path: Path, monkeypatch) -> None:
    names: list[str] = []
    real_save = torch.save

    def recording(obj, handle, *args, **kwargs):
        names.append(Path(handle.name).name)
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(ckpt.torch, "save", recording)
    write_checkpoint(_state(1), tmp_path)
    write_checkpoint(_state(2), tmp_path)
    assert len(set(names)) == 2
    assert all(
        name.startswith(f".{CHECKPOINT_NAME}.{os.getpid()}.") and name.endswith(".tmp") for name in names
    )
