"""A succeeded training's network as ONNX or TorchScript: built once, on first request, and kept beside
its weights (`ARTIFACT_DIR/trainings/<id>/model.onnx`, `model.pt`).

The file is built by `darts export` in a child process: the API process never imports torch (its
memory stays that of a web server, and an export that crashes or hangs costs a 500, not the API). One
build per file at a time in this process (a second request waits for the first and is then served its
file); at most `MAX_CONCURRENT_EXPORTS` builds at once. The child writes atomically, so API processes
that race on the same file both serve a whole one.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.orm import Session

from app.services.errors import Conflict, ServiceError
from app.services.trainings import weights_file
from app.settings import Settings
from darts_core.spec.artifacts import ExportFormat

__all__ = ["MAX_CONCURRENT_EXPORTS", "ExportFailed", "export_file"]

#: Export processes one API process runs at once (each loads torch: a few hundred MB).
MAX_CONCURRENT_EXPORTS = 2
#: Exit status of `darts` for bad input (`darts_core.cli.common.EXIT_BAD_INPUT`): the weights cannot be
#: exported as they are, which is the training's state, not the server's fault.
_EXIT_BAD_INPUT = 2

_slots = threading.BoundedSemaphore(MAX_CONCURRENT_EXPORTS)
# One lock per file being exported, with the number of requests holding or waiting for it: the entry
# goes with its last request, so the table holds only the exports in progress.
_file_locks: dict[Path, tuple[threading.Lock, int]] = {}
_file_locks_guard = threading.Lock()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Requests for the same file one at a time (the first builds it, the others then find it)."""
    with _file_locks_guard:
        lock, users = _file_locks.get(path, (threading.Lock(), 0))
        _file_locks[path] = (lock, users + 1)
    try:
        with lock:
            yield
    finally:
        with _file_locks_guard:
            lock, users = _file_locks[path]
            if users == 1:
                del _file_locks[path]
            else:
                _file_locks[path] = (lock, users - 1)


class ExportFailed(ServiceError):
    """The export process failed or ran out of time (500, its last message named)."""

    status_code = 500


def export_file(session: Session, training_id: str, format: ExportFormat, *, settings: Settings) -> Path:
    """The `format` file of a succeeded training, built now if it is not there yet.

    Raises:
        NotFound: no such training.
        Conflict: the training has not succeeded, or its weights cannot be exported (the reason named).
        ExportFailed: the export process failed or took longer than `EXPORT_TIMEOUT_SECONDS`.
    """
    weights = weights_file(session, training_id, settings=settings)
    path = weights.with_name(format.file_name)
    with _file_lock(path):
        if not path.is_file():
            _remove_dead_temporaries(path)
            with _slots:
                _build(weights, path, format, timeout=settings.export_timeout_seconds)
    return path


def _remove_dead_temporaries(path: Path) -> None:
    """Remove what an export killed mid-write left of `path` (`.NAME.PID.HEX.tmp`, written by
    `darts_core.train.weights.write_bytes_atomically`), unless its process still runs (another API
    process may be building the same file)."""
    for temporary in path.parent.glob(f".{path.name}.*.tmp"):
        pid = temporary.name.removeprefix(f".{path.name}.").split(".")[0]
        if pid.isdigit() and not _running(int(pid)):
            temporary.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # a process of another user
    return True


def _build(weights: Path, path: Path, format: ExportFormat, *, timeout: float) -> None:
    command = [
        sys.executable, "-m", "darts_core.cli.main", "export", str(weights),
        "--format", format.value, "--output", str(path),
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise ExportFailed(f"the {format.value} export took longer than {timeout:g} s") from None
    if done.returncode == 0:
        return
    lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
    reason = lines[-1] if lines else f"exit status {done.returncode}"
    if done.returncode == _EXIT_BAD_INPUT:
        raise Conflict(f"the trained network cannot be exported as {format.value}: {reason}")
    raise ExportFailed(f"the {format.value} export failed: {reason}")
