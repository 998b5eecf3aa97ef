"""A search too large for its worker after all: the allocation fails inside the worker (its address
space is capped at WORKER_MEMORY_BYTES), the search ends `failed` with "out of memory" after that one
attempt, and the worker lives on (no kill from outside, no retry loop)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

from .conftest import WorkerProcess, get_search, submit, tiny_spec, wait_for_status

QUEUE = "out-of-memory"
WORKER_CAP = 2_500_000_000  # a few hundred MB above a worker's own needs (torch, Celery)


@pytest.fixture
def capped(
    stack_settings: Settings, stack_env: dict[str, str], auth_headers: dict[str, str], tmp_path: Path
) -> Iterator[tuple[TestClient, WorkerProcess]]:
    from app.main import create_app

    # The API admits the search (its own WORKER_MEMORY_BYTES is generous); the worker has a small cap.
    settings = stack_settings.model_copy(update={"celery_queue": QUEUE, "worker_memory_bytes": 10**13})
    worker = WorkerProcess(
        {**stack_env, "CELERY_QUEUE": QUEUE, "WORKER_MEMORY_BYTES": str(WORKER_CAP)}, tmp_path
    ).start()
    try:
        with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as api:
            yield api, worker
    finally:
        worker.stop()


def test_a_search_too_large_for_its_worker_fails_once_with_out_of_memory(
    capped: tuple[TestClient, WorkerProcess], api: TestClient
) -> None:
    client, worker = capped
    spec = tiny_spec(epochs=2, name="too large")
    # A full search space on 64x64 images at batch 256: one cell's activations alone are gigabytes.
    spec["dataset"] = {"name": "synthetic", "num_samples": 1024, "image_size": 64, "channels": 3,
                       "num_classes": 2}
    spec["search_space"] = {"internal_nodes": 4}
    spec["network"] = {"cells": 5, "init_channels": 48, "stem_multiplier": 3}
    spec["training"] = {"epochs": 2, "batch_size": 256}
    search_id = submit(client, spec)["id"]
    # `api` runs the ingester that stores the worker's events.
    final = wait_for_status(api, search_id, {"failed", "succeeded", "cancelled"}, timeout=180)
    assert final["status"] == "failed"
    assert final["error"].startswith("out of memory"), final["error"]
    assert worker.alive, worker.log()
    assert get_search(api, search_id)["epoch"] == 0
