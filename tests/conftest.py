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


# ---------------------------------------------------------------------------------------------------
# Browser tests (`@pytest.mark.browser`) drive the system's Chromium (Debian's `chromium`; `.ci/run`
# installs it). Where it is missing they are deselected and reported in ONE loud line at the end of
# the run, never silently; on CI (CI=true) a missing Chromium fails the run.

from pathlib import Path  # noqa: E402

CHROMIUM = Path(os.environ.get("DARTS_CHROMIUM", "/usr/bin/chromium"))
_browser_report: dict[str, object] = {}


def _browser_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set DARTS_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (make install)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    browser_items = [item for item in items if item.get_closest_marker("browser")]
    reason = _browser_missing() if browser_items else None
    if reason is None:
        return
    items[:] = [item for item in items if not item.get_closest_marker("browser")]
    config.hook.pytest_deselected(items=browser_items)
    _browser_report.update(count=len(browser_items), reason=reason)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if _browser_report:
        verdict = "FAILED (CI=true needs them)" if os.environ.get("CI") else "NOT RUN"
        terminalreporter.write_sep(
            "!",
            f"BROWSER TESTS {verdict}: {_browser_report['count']} skipped, {_browser_report['reason']}",
            red=True,
            bold=True,
        )


def _browser_verdict(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, browser tests that could not run fail the session."""
    if _browser_report and os.environ.get("CI") and exitstatus == 0:
        session.exitstatus = 1


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
    _browser_verdict(session, exitstatus)
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
def write_npz_of_zeros(path, shape: tuple[int, ...], dtype: str = "uint8", labels: int = 10) -> None:
    """An `.npz` whose `x` is `shape` zeros, written (deflated) in 1 MiB pieces: a zip bomb of a few
    hundred KB for large shapes, made without ever holding the array. `y` cycles through `labels`."""
    import math
    import zipfile

    import numpy as np

    stand_in = np.broadcast_to(np.zeros((), dtype=dtype), shape)
    header = np.lib.format.header_data_from_array_1_0(stand_in)
    remaining = math.prod(shape) * np.dtype(dtype).itemsize
    piece = bytes(2**20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            while remaining:
                count = min(remaining, len(piece))
                member.write(piece[:count])
                remaining -= count
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, np.arange(shape[0]) % labels)
