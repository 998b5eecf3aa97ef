"""The worker's liveness, for its healthcheck and for `/metrics`.

A worker is alive while it can consume: its Celery consumer loop ticks (Celery's worker heartbeat,
every 2 s, fires `heartbeat_sent` from that loop) or it is running a task (the solo pool runs the
search in the loop's thread, which then cannot tick: the search's own lease heartbeat covers it). While
alive, a thread of the worker

- touches `WORKER_ALIVE_FILE` (when set; the compose healthcheck is `python -m worker.health`, which
  fails once the file is older than `--max-age` seconds), and
- writes `{REDIS_PREFIX}:workers:<hostname>` in Redis with a short TTL (the API's `/metrics` reports the
  workers whose heartbeat is there), its value naming the worker's device and, on a GPU, its total
  memory (`probe_device`, once at start, in a child process: this process must not initialise CUDA
  before its task does, and imports no torch until then). Admission compares CUDA jobs with it.

Celery imports this module in the worker only (the app's `include`), which connects the signals.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

from celery import signals

from app.settings import get_settings
from app.worker_heartbeat import WorkerDevice, decode_heartbeat, encode_heartbeat, heartbeat_key

logger = logging.getLogger(__name__)

BEAT_SECONDS = 5.0
# The consumer loop's own heartbeat comes every 2 s; after this long without one (and no task
# running) the worker has stopped consuming.
STALL_SECONDS = 30.0
WORKER_KEY_TTL_SECONDS = 30


PROBE_SECONDS = 120.0
# Run by `probe_device` in a child interpreter: the device torch would give a job of this worker
# ("auto": CUDA_VISIBLE_DEVICES' first GPU when there is one), as `encode_heartbeat`'s JSON.
_PROBE = """
import json, torch
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(json.dumps({"device": "cuda", "name": p.name, "memory_bytes": p.total_memory}))
else:
    print(json.dumps({"device": "cpu"}))
"""


def worker_key(prefix: str, hostname: str) -> str:
    return heartbeat_key(prefix, hostname)


def probe_device(hostname: str, timeout: float = PROBE_SECONDS) -> WorkerDevice:
    """This worker's device (CUDA's first visible GPU and its total memory, else the CPU), asked of torch
    in a child process; "unknown" when the child fails or takes longer than `timeout` seconds."""
    import subprocess

    try:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, timeout=timeout, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("could not tell this worker's device: %s", exc)
        return WorkerDevice(hostname, "unknown")
    device = decode_heartbeat(hostname, done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None)
    logger.info("worker device: %s", device)
    return device


class _Liveness:
    def __init__(self) -> None:
        self.last_loop_beat = time.monotonic()
        self.tasks_running = 0
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None
        self.hostname = "worker"
        self.device: WorkerDevice | None = None

    def alive(self) -> bool:
        return self.tasks_running > 0 or time.monotonic() - self.last_loop_beat < STALL_SECONDS

    def _probe(self) -> None:
        self.device = probe_device(self.hostname)

    def run(self) -> None:
        settings = get_settings()
        from app.redis import get_redis

        client = get_redis(settings)
        key = worker_key(settings.redis_prefix, self.hostname)
        # The probe imports torch (seconds): the beats go on meanwhile, with the device unknown.
        threading.Thread(target=self._probe, name="worker-device-probe", daemon=True).start()
        try:
            while not self.stop.wait(BEAT_SECONDS):
                if not self.alive():
                    logger.warning("worker consumer loop silent for %.0f s", STALL_SECONDS)
                    continue
                if settings.worker_alive_file is not None:
                    settings.worker_alive_file.touch()
                try:
                    device = self.device or WorkerDevice(self.hostname, "unknown")
                    client.set(key, encode_heartbeat(time.time(), device), ex=WORKER_KEY_TTL_SECONDS)
                except Exception as exc:  # Redis down: the file still says we are alive
                    logger.warning("worker heartbeat not written to Redis: %s", exc)
        finally:
            client.close()


_liveness = _Liveness()


@signals.worker_ready.connect
def _on_worker_ready(sender: Any = None, **_kwargs: Any) -> None:
    _liveness.hostname = getattr(sender, "hostname", None) or "worker"
    _liveness.last_loop_beat = time.monotonic()
    settings = get_settings()
    if settings.worker_alive_file is not None:
        settings.worker_alive_file.touch()
    _liveness.thread = threading.Thread(target=_liveness.run, name="worker-liveness", daemon=True)
    _liveness.thread.start()


@signals.heartbeat_sent.connect
def _on_heartbeat(**_kwargs: Any) -> None:
    _liveness.last_loop_beat = time.monotonic()


@signals.task_prerun.connect
def _on_task_start(**_kwargs: Any) -> None:
    _liveness.tasks_running += 1


@signals.task_postrun.connect
def _on_task_end(**_kwargs: Any) -> None:
    _liveness.tasks_running = max(0, _liveness.tasks_running - 1)
    _liveness.last_loop_beat = time.monotonic()


@signals.worker_shutdown.connect
def _on_worker_shutdown(**_kwargs: Any) -> None:
    _liveness.stop.set()


def check(alive_file: Path, max_age: float) -> str | None:
    """None when `alive_file` was touched within `max_age` seconds, else why the worker is unhealthy."""
    try:
        age = time.time() - alive_file.stat().st_mtime
    except FileNotFoundError:
        return f"{alive_file} does not exist: the worker is not ready"
    if age > max_age:
        return f"{alive_file} is {age:.0f} s old: the worker stopped consuming"
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m worker.health",
        description="Exit 0 when the worker touched WORKER_ALIVE_FILE recently (its container healthcheck).",
    )
    parser.add_argument("--max-age", type=float, default=60.0, help="seconds (default 60)")
    args = parser.parse_args(argv)
    alive_file = get_settings().worker_alive_file
    if alive_file is None:
        print("WORKER_ALIVE_FILE is not set", file=sys.stderr)
        return 2
    problem = check(alive_file, args.max_age)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
