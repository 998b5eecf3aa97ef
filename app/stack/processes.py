"""Child processes of the one-machine stack: tying their life to ours, and stopping them.

Shared by `darts-service up` (its Redis server and worker), `python -m app.stack.demo` and the tests;
the command lines of the service's own processes (`darts-service worker` execs the worker's too).
"""

from __future__ import annotations

import ctypes
import logging
import signal
import subprocess
import sys
from collections.abc import Callable

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _load_prctl() -> Callable[..., int] | None:
    """libc's prctl (Linux), loaded up front: a preexec_fn must not import anything after fork."""
    try:
        prctl: Callable[..., int] = ctypes.CDLL("libc.so.6", use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def die_with_parent(signum: int = signal.SIGTERM) -> Callable[[], None]:
    """A `preexec_fn`: the child receives `signum` when its parent dies, even by SIGKILL (Linux only;
    elsewhere it does nothing)."""

    def preexec() -> None:
        if _PRCTL is not None:
            _PRCTL(_PR_SET_PDEATHSIG, signum)

    return preexec


def stop_process(
    process: subprocess.Popen[bytes] | None,
    *,
    timeout: float,
    signum: int = signal.SIGTERM,
    name: str = "process",
) -> int | None:
    """Send `signum`, wait up to `timeout` seconds, then SIGKILL. Returns the exit code (None when
    there was no process)."""
    if process is None:
        return None
    if process.poll() is None:
        process.send_signal(signum)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s (pid %s) did not stop within %s s; killing it", name, process.pid, timeout)
            process.kill()
            process.wait()
    return process.returncode


def worker_command(loglevel: str) -> list[str]:
    """The command line of one worker process (`python -m worker`)."""
    return [sys.executable, "-m", "worker", "--loglevel", loglevel]


def ingester_command(loglevel: str) -> list[str]:
    """The command line of `up`'s ingester process (`darts-service ingest`)."""
    return [sys.executable, "-m", "app.cli", "ingest", "--loglevel", loglevel]
