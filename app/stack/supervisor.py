"""Children of `darts-service up` kept alive: the embedded Redis server and the Celery worker.

A `SupervisedProcess` starts its child, watches it from a thread, and starts it again when it exits
on its own, with a backoff that grows while the child keeps dying quickly and resets once it ran for
`healthy_after` seconds. `state` is what `/readyz` reports.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable

from app.stack.processes import stop_process

logger = logging.getLogger(__name__)


class SupervisedProcess:
    """One child process restarted whenever it dies (see the module docstring).

    `spawn()` starts the child and returns it (it may block until the child is ready);
    `on_exit(pid, code)` runs after each unexpected exit, before the restart.
    """

    def __init__(
        self,
        name: str,
        spawn: Callable[[], subprocess.Popen[bytes]],
        *,
        on_exit: Callable[[int, int], None] | None = None,
        stop_timeout: float = 60.0,
        healthy_after: float = 60.0,
        max_backoff: float = 30.0,
        poll_seconds: float = 0.2,
    ) -> None:
        self.name = name
        self._spawn = spawn
        self.on_exit = on_exit
        self.stop_timeout = stop_timeout
        self.healthy_after = healthy_after
        self.max_backoff = max_backoff
        self.poll_seconds = poll_seconds
        self.process: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self.state = "starting"
        self._started_at = 0.0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._watcher = threading.Thread(target=self._watch, name=f"supervise-{name}", daemon=True)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _start_child(self) -> None:
        with self._lock:
            if self._stopping.is_set():
                return
            self.process = self._spawn()
            self._started_at = time.monotonic()
            self.state = "running"
        logger.info("%s started (pid %s)", self.name, self.process.pid)

    def start(self) -> SupervisedProcess:
        self._start_child()
        self._watcher.start()
        return self

    def _watch(self) -> None:
        backoff = 0.0
        while not self._stopping.wait(self.poll_seconds):
            process = self.process
            if process is None or process.poll() is None:
                continue
            if self._stopping.is_set():
                return
            ran_for = time.monotonic() - self._started_at
            backoff = 0.0 if ran_for >= self.healthy_after else min(max(backoff * 2, 0.5), self.max_backoff)
            self.state = "restarting"
            self.restarts += 1
            logger.error("%s (pid %s) exited with code %s after %.0f s; restarting it in %.1f s",
                         self.name, process.pid, process.returncode, ran_for, backoff)
            if self.on_exit is not None:
                try:
                    self.on_exit(process.pid, process.returncode)
                except Exception:
                    logger.exception("after %s exited", self.name)
            if self._stopping.wait(backoff):
                return
            try:
                self._start_child()
            except Exception:
                logger.exception("could not start %s again", self.name)
                self._started_at = time.monotonic()

    def stop(self) -> None:
        """Stop watching and stop the child (SIGTERM, then SIGKILL after `stop_timeout`)."""
        with self._lock:
            self._stopping.set()
            self.state = "stopped"
        stop_process(self.process, timeout=self.stop_timeout, name=self.name)
