"""A training's worker killed (SIGKILL) mid-run: another worker resumes it from its last checkpoint,
and the result is bit-identical to one uninterrupted run (every epoch's metrics, and the weights).

On a stack of its own (as tests/service/integration/test_faults.py), once (marker `faults`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from app.models import Training

from .conftest import wait_until
from .test_faults import FAULT_LEASE_SECONDS, FaultStack, start_worker
from .test_faults import stack as stack  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.faults, pytest.mark.slow]

EPOCHS = 5
BODY: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "network": {"init_channels": 8, "cells": 3},
    "training": {"epochs": EPOCHS, "batch_size": 64, "seed": 3},
    "resources": {"device": "cpu"},
}
# Everything of an epoch record but its duration.
COMPARED = (
    "train_loss", "train_acc", "valid_loss", "valid_acc", "test_loss", "test_acc", "lr", "drop_path_prob"
)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict[str, Any]], Path]:
    """One uninterrupted run of BODY with darts_core in this process (one thread): epochs, weights."""
    from darts_core.data.registry import load_dataset
    from darts_core.spec.genotype import DARTS_V2
    from darts_core.spec.training_spec import TrainingJobConfig
    from darts_core.train.job import run_training_job
    from darts_core.train.weights import save_trained

    result = run_training_job(DARTS_V2, TrainingJobConfig.from_spec(BODY), load_dataset(BODY["dataset"]))
    path = tmp_path_factory.mktemp("reference") / "model.safetensors"
    save_trained(result.network, path)
    return [epoch.to_dict() for epoch in result.history], path


def _row(stack: FaultStack, training_id: str) -> Training:
    with stack.factory() as session:
        training = session.get(Training, training_id)
        assert training is not None
        return training


def test_a_training_s_worker_killed_mid_run_resumes_bit_identical(
    stack: FaultStack, tmp_path: Path, reference: tuple[list[dict[str, Any]], Path]  # noqa: F811
) -> None:
    import torch

    from darts_core import load_trained
    from darts_core.spec.genotype import DARTS_V2

    records, reference_weights = reference
    start_worker(stack, tmp_path)
    start_worker(stack, tmp_path)
    created = stack.api.post("/trainings", json={**BODY, "genotype": DARTS_V2.to_json()})
    assert created.status_code == 201, created.text
    training_id = created.json()["id"]
    wait_until(lambda: _row(stack, training_id).epoch >= 2, 300, "epoch 2", interval=0.05)
    owner = _row(stack, training_id).lease_owner or ""
    victim = next(w for w in stack.workers if w.process and w.process.pid == int(owner.split(":")[1]))
    killed_at = time.monotonic()
    victim.kill()
    wait_until(
        lambda: (row := _row(stack, training_id)).attempts == 2 and row.status == "running"
        and row.lease_owner,
        60,
        "another worker to take the training over",
        interval=0.05,
    )
    print(f"\ntraining: worker killed -> running again on the other worker: "
          f"{time.monotonic() - killed_at:.1f} s (lease {FAULT_LEASE_SECONDS} s)")
    final = wait_until(
        lambda: (row := _row(stack, training_id)).status in ("succeeded", "failed", "cancelled") and row,
        300,
        "the training to finish",
        interval=0.2,
    )
    assert final.status == "succeeded", final.error

    got = stack.api.get(f"/trainings/{training_id}/epochs").json()["items"]
    assert [record["epoch"] for record in got] == list(range(1, EPOCHS + 1))  # each exactly once
    for mine, want in zip(got, records, strict=True):
        for key in COMPARED:
            assert mine[key] == want[key], (mine["epoch"], key)
    assert final.test_accuracy == records[-1]["test_acc"]

    download = stack.api.get(f"/trainings/{training_id}/weights")
    assert download.status_code == 200
    path = tmp_path / "downloaded.safetensors"
    path.write_bytes(download.content)
    resumed, uninterrupted = load_trained(path).state_dict(), load_trained(reference_weights).state_dict()
    assert resumed.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(resumed[name], tensor), name
