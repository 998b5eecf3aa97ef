"""Suite-wide settings.

Torch runs on one thread in tests: the suite shares two cores with the Celery worker subprocesses of
the integration tests, and oversubscribed intra-op threads make small convolutions many times slower.
Subprocesses inherit the same choice through OMP_NUM_THREADS.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads when it loads)

torch.set_num_threads(1)


# ---------------------------------------------------------------------------------------------------
# Browser tests (`@pytest.mark.browser`) drive the system's Chromium (Debian's `chromium`; `.ci/run`
# installs it). Where it is missing they are deselected and reported in ONE loud line at the end of
# the run, never silently; on CI (CI=true) a missing Chromium fails the run.

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _browser_report and os.environ.get("CI") and exitstatus == 0:
        session.exitstatus = 1
