"""The worker's liveness: the file its container healthcheck reads, and its heartbeat in Redis."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import redis

from app.worker_heartbeat import decode_heartbeat
from worker.health import check

from .conftest import REPO_ROOT, WorkerProcess, wait_until


def _healthcheck(env: dict[str, str], max_age: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.health", "--max-age", str(max_age)],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_a_consuming_worker_is_healthy_and_reports_its_heartbeat(
    running_worker: WorkerProcess, stack_env: dict[str, str]
) -> None:
    alive_file = Path(stack_env["WORKER_ALIVE_FILE"])
    touched = alive_file.stat().st_mtime if alive_file.exists() else 0.0
    # The liveness thread touches the file every few seconds while the consumer loop ticks.
    wait_until(lambda: alive_file.exists() and alive_file.stat().st_mtime > touched, 60, "a fresh touch")
    result = _healthcheck(stack_env, max_age=30)
    assert result.returncode == 0, result.stderr
    client = redis.Redis.from_url(stack_env["REDIS_URL"], decode_responses=True)
    try:
        keys = wait_until(
            lambda: list(client.scan_iter(match=f"{stack_env['REDIS_PREFIX']}:workers:*")), 30, "a heartbeat"
        )
        beat = decode_heartbeat("worker", client.get(keys[0]))
        assert beat.device == "cpu" and beat.at is not None and abs(beat.at - time.time()) < 60
        assert 0 < client.ttl(keys[0]) <= 30
    finally:
        client.close()


def test_the_healthcheck_fails_on_a_stale_or_missing_file(tmp_path: Path, stack_env: dict[str, str]) -> None:
    stale = tmp_path / "worker.alive"
    stale.touch()
    old = time.time() - 600
    os.utime(stale, (old, old))
    assert "stopped consuming" in check(stale, max_age=60)
    assert "does not exist" in check(tmp_path / "missing", max_age=60)
    assert check(stale, max_age=3600) is None
    result = _healthcheck({**stack_env, "WORKER_ALIVE_FILE": str(stale)}, max_age=60)
    assert result.returncode == 1 and "stopped consuming" in result.stderr
