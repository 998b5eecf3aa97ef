"""Fixtures of the integration tests: a real Celery worker subprocess and the API with its ingester.

Everything runs against the session's isolated stack of tests/service/conftest.py (`service_settings`):
SQLite or PostgreSQL (`DARTS_TEST_BACKEND=postgres`), and Redis, as that file describes.

- `stack_settings`: those settings with a short lease (`SEARCH_LEASE_SECONDS=8`), so a killed worker's
  search is handed back within seconds.
- `worker` (package): `darts-service worker` as a subprocess; tests that kill it start it again.
- `api` (package): a TestClient over `create_app(stack_settings)` with the in-process event ingester on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.settings import Settings

pytestmark = pytest.mark.integration

LEASE_SECONDS = 8
BACKEND_IS_POSTGRES = os.environ.get("DARTS_TEST_BACKEND", "sqlite") == "postgres"
REPO_ROOT = Path(__file__).resolve().parents[3]

# A search of a few seconds: 3 cells on 8x8 images, 2 internal nodes, 4 primitives, 2 steps an epoch.
TINY_SPEC: dict[str, Any] = {
    "dataset": {"name": "synthetic", "num_samples": 64, "image_size": 8, "num_classes": 2, "channels": 1},
    "search_space": {
        "primitives": ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"],
        "internal_nodes": 2,
    },
    "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
    "training": {"epochs": 3, "batch_size": 16},
    "resources": {"device": "cpu"},
}


def tiny_spec(epochs: int = 3, samples: int = 64, **overrides: Any) -> dict[str, Any]:
    """TINY_SPEC with `epochs`; `samples` sets the epoch's length (samples / 64 steps)."""
    spec = {key: dict(value) for key, value in TINY_SPEC.items()}
    spec["training"]["epochs"] = epochs
    spec["dataset"]["num_samples"] = samples
    spec.update(overrides)
    return spec


def wait_until(condition: Callable[[], Any], timeout: float, message: str, interval: float = 0.05) -> Any:
    """Poll `condition` until it returns something truthy; fail with `message` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s: {message}")
        time.sleep(interval)


class WorkerProcess:
    """`darts-service worker` in a subprocess, its output in a log file."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = env
        self.log_dir = log_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.starts = 0

    def start(self, timeout: float = 90.0) -> WorkerProcess:
        self.starts += 1
        self.log_path = self.log_dir / f"worker-{self.starts}.log"
        log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--loglevel", "info"],
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        wait_until(
            lambda: self.process.poll() is not None or b" ready." in self.log_path.read_bytes(),
            timeout,
            "the Celery worker to be ready",
            interval=0.2,
        )
        if self.process.poll() is not None:
            pytest.fail(f"the Celery worker exited with {self.process.returncode}:\n{self.log()}")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        """SIGKILL: the worker dies mid-task, as on a crash or an OOM kill."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """Warm shutdown (SIGTERM), as `darts-service up` does on Ctrl-C."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ensure_running(self) -> None:
        if not self.alive:
            self.start()


@pytest.fixture(scope="session")
def stack_settings(service_settings: Settings) -> Settings:
    return service_settings.model_copy(update={"search_lease_seconds": LEASE_SECONDS})


@pytest.fixture(scope="session")
def stack_env(service_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    # One torch thread: the tiny searches gain nothing from more, and spinning threads on cores shared
    # with the rest of the suite slow everything down.
    return {
        **os.environ,
        **service_env,
        "SEARCH_LEASE_SECONDS": str(LEASE_SECONDS),
        "WORKER_ALIVE_FILE": str(tmp_path_factory.mktemp("worker-health") / "worker.alive"),
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }


# Package scope: the worker and the ingester stop when the integration tests end, so they never
# pick up what the other service tests enqueue or write.
@pytest.fixture(scope="package")
def worker(stack_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack_env, tmp_path_factory.mktemp("worker-logs")).start()
    yield process
    process.stop()


@pytest.fixture
def running_worker(worker: WorkerProcess) -> WorkerProcess:
    """The session's worker, started again if an earlier test stopped or killed it."""
    worker.ensure_running()
    return worker


@pytest.fixture(scope="package")
def api(stack_settings: Settings, auth_headers: dict[str, str]) -> Iterator[TestClient]:
    from app.main import create_app

    app = create_app(stack_settings, run_ingester=True)
    with TestClient(app, headers=auth_headers) as client:
        yield client


def submit(api: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    response = api.post("/searches", json=spec)
    assert response.status_code == 201, response.text
    return response.json()


def get_search(api: TestClient, search_id: str) -> dict[str, Any]:
    response = api.get(f"/searches/{search_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_for_status(
    api: TestClient, search_id: str, statuses: set[str], timeout: float = 180.0
) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        search = get_search(api, search_id)
        return search if search["status"] in statuses else None

    return wait_until(reached, timeout, f"search {search_id} to reach {sorted(statuses)}", interval=0.1)


def finish(api: TestClient, search_id: str) -> None:
    """Cancel `search_id` if it is still going, so the next test finds the worker idle."""
    search = get_search(api, search_id)
    if search["status"] in ("queued", "running", "cancelling"):
        api.post(f"/searches/{search_id}/cancel")
        wait_for_status(api, search_id, {"cancelled", "succeeded", "failed"}, timeout=120)
