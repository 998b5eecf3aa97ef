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


class _FakeCuda:
    """torch.cuda's RNG functions on ``count`` simulated GPUs (each generator state a small ByteTensor)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, count: int) -> None:
        self.states = {index: torch.full((8,), index + 1, dtype=torch.uint8) for index in range(count)}
        self.calls: list[str] = []
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_rng_state", self.get)
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", self.get_all)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", self.set_all)

    def _index(self, device: int | str | torch.device) -> int:
        index = torch.device(device).index if not isinstance(device, int) else device
        if index is None or index not in self.states:
            raise IndexError(f"no GPU {device!r}")  # what torch raises beyond device_count
        return index

    def get(self, device: int | str | torch.device = "cuda") -> torch.Tensor:
        self.calls.append(f"get {device}")
        return self.states[self._index(device)].clone()

    def set(self, state: torch.Tensor, device: int | str | torch.device = "cuda") -> None:
        self.calls.append(f"set {device}")
        self.states[self._index(device)] = state.clone()

    def get_all(self) -> list[torch.Tensor]:
        self.calls.append("get_all")
        return [self.states[index].clone() for index in sorted(self.states)]

    def set_all(self, states: list[torch.Tensor]) -> None:
        self.calls.append("set_all")
        for index, state in enumerate(states):
            self.set(state, index)


def test_a_cpu_run_saves_no_gpu_state_and_touches_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    gpus = _FakeCuda(monkeypatch, 2)
    state = ckpt.rng_state(torch.device("cpu"))
    assert state["cuda"] == {}
    ckpt.set_rng_state(state, torch.device("cpu"))
    assert gpus.calls == []


def test_a_gpu_run_saves_its_device_only_and_resumes_where_there_are_fewer_gpus(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    writer = _FakeCuda(monkeypatch, 2)
    writer.states[1] = torch.arange(8, dtype=torch.uint8)
    ckpt.write_checkpoint({"format": 1, "rng": ckpt.rng_state(torch.device("cuda:1"))}, tmp_path)
    assert writer.calls == ["get 1"]
    loaded = ckpt.load_checkpoint(tmp_path)
    assert loaded is not None
    saved = loaded[0]["rng"]
    assert saved["cuda"]["index"] == 1
    # One GPU: the state goes to the GPU the run now uses.
    reader = _FakeCuda(monkeypatch, 1)
    ckpt.set_rng_state(saved, torch.device("cuda"))
    assert torch.equal(reader.states[0], torch.arange(8, dtype=torch.uint8))
    # No GPU: the same checkpoint resumes on CPU, the GPU state ignored.
    nothing = _FakeCuda(monkeypatch, 0)
    ckpt.set_rng_state(saved, torch.device("cpu"))
    ckpt.set_rng_state(saved)
    assert nothing.calls == []


def test_old_checkpoints_with_every_gpus_state_still_load(monkeypatch: pytest.MonkeyPatch) -> None:
    _FakeCuda(monkeypatch, 2)
    old = ckpt.rng_state(torch.device("cpu"))
    old["cuda"] = [torch.full((8,), 7, dtype=torch.uint8), torch.full((8,), 9, dtype=torch.uint8)]
    one = _FakeCuda(monkeypatch, 1)
    ckpt.set_rng_state(old, torch.device("cuda:0"))  # before: set_rng_state_all -> IndexError on GPU 1
    assert torch.equal(one.states[0], old["cuda"][0])
    two = _FakeCuda(monkeypatch, 2)
    ckpt.set_rng_state(old, torch.device("cuda:1"))
    assert torch.equal(two.states[1], old["cuda"][1])
    ckpt.set_rng_state({**old, "cuda": []}, torch.device("cuda:0"))  # a CPU run's old checkpoint
    ckpt.set_rng_state(old, torch.device("cpu"))
    assert "set_all" not in one.calls + two.calls


def _steps(optimizer: torch.optim.Optimizer) -> list[tuple[torch.device, torch.dtype, float]]:
    return [
        (state["step"].device, state["step"].dtype, float(state["step"]))
        for state in optimizer.state.values()
        if isinstance(state.get("step"), torch.Tensor)
    ]


def test_adams_steps_end_up_where_a_fresh_optimizer_keeps_them_after_a_resume() -> None:
    """Read with `map_location` onto a GPU, a checkpoint's Adam `step` scalars stayed on the GPU after
    `load_state_dict` (one sync per architecture tensor per step). Simulated on CPU by steps saved in
    another form (float64, as `map_location` moved them elsewhere): the loaded state's steps are those
    of a fresh optimizer after the same step (CPU float32 scalars), the moments on the parameters' device,
    and a capturable optimizer's steps stay on its parameters' device."""
    from darts_core.nn.search_network import SearchNetwork
    from darts_core.search.bilevel import DartsSearch

    torch.manual_seed(0)

    def search() -> DartsSearch:
        network = SearchNetwork(3, 4, init_channels=4, cells=2, internal_nodes=2, primitives=["skip_connect"])
        return DartsSearch(network, order="first", epochs=1)

    def batch() -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(4, 3, 8, 8), torch.randint(0, 4, (4,))

    fresh = search()
    fresh.step(batch(), batch())
    expected = _steps(fresh.arch_optimizer)
    assert expected and all(step == (torch.device("cpu"), torch.float32, 1.0) for step in expected)
    state = fresh.state_dict()
    for saved in state["arch_optimizer"]["state"].values():
        saved["step"] = saved["step"].to(torch.float64)
    resumed = search()
    resumed.load_state_dict(state)
    assert _steps(resumed.arch_optimizer) == expected
    for parameter in resumed.alphas:
        assert resumed.arch_optimizer.state[parameter]["exp_avg"].device == parameter.device

    parameter = torch.nn.Parameter(torch.zeros(3))
    capturable = torch.optim.Adam([parameter], capturable=True)  # its step() needs a GPU: a saved state
    moments = {"exp_avg": torch.zeros(3), "exp_avg_sq": torch.zeros(3)}
    saved_state = {
        "state": {0: {"step": torch.tensor(1.0, dtype=torch.float64), **moments}},
        "param_groups": capturable.state_dict()["param_groups"],
    }
    ckpt.load_optimizer_state(capturable, saved_state)
    assert _steps(capturable) == [(parameter.device, torch.float32, 1.0)]
