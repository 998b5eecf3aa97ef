"""Suite-wide settings.

Torch runs on one thread in tests: the suite shares two cores with the Celery worker subprocesses of
the integration tests, and oversubscribed intra-op threads make small convolutions many times slower.
Subprocesses inherit the same choice through OMP_NUM_THREADS.

At the end of the session no process the suite started may still run (`pytest_sessionfinish`).
"""

from __future__ import annotations

import os
import time

import psutil
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads when it loads)

torch.set_num_threads(1)


def _leftover_processes(session: pytest.Session) -> list[psutil.Process]:
    """Processes the suite started that still run: our descendants, and any process (reparented after
    its parent died) whose command line names a file under pytest's temporary directory."""
    me = psutil.Process()
    found = {process.pid: process for process in me.children(recursive=True)}
    factory = getattr(session.config, "_tmp_path_factory", None)
    basetemp = str(factory.getbasetemp()) if factory is not None and factory._basetemp else None
    if basetemp:
        for process in psutil.process_iter(["cmdline"]):
            if process.pid != me.pid and any(basetemp in part for part in process.info["cmdline"] or ()):
                found.setdefault(process.pid, process)
    alive = []
    for process in found.values():
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process)
        except psutil.NoSuchProcess:
            pass
    return alive


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Every server and worker the suite started is stopped by the fixture that started it; this
    checks it at the very end. A leftover fails the run (and is killed, so nothing stays behind)."""
    deadline = time.monotonic() + 15  # a process stopped by the last teardown may still be exiting
    while (left := _leftover_processes(session)) and time.monotonic() < deadline:
        time.sleep(0.2)
    if not left:
        return
    lines = []
    for process in left:
        try:
            lines.append(f"  pid {process.pid}: {' '.join(process.cmdline())[:200]}")
            process.kill()
        except psutil.NoSuchProcess:
            pass
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    message = "processes the test suite started were still running at its end (killed now):\n"
    if reporter is not None:
        reporter.write_line(message + "\n".join(lines), red=True, bold=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
