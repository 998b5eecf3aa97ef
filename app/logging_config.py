"""Logging of every darts-service process (API, ingester, worker): one formatter, one context.

Every line carries the search id, the attempt and the request id it belongs to (null when none does):
they live in context variables that the request middleware (`app.http.request_context`), the ingester
(per event) and the worker (per task) set, and a filter copies them onto each record, whoever logs
it: our modules, uvicorn, Celery, SQLAlchemy.

`LOG_FORMAT=json` writes one JSON object a line (the image's default); `LOG_FORMAT=text` readable
lines; unset, text on a terminal and JSON otherwise.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TextIO

search_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("search_id", default=None)
attempt_var: contextvars.ContextVar[int | None] = contextvars.ContextVar("attempt", default=None)
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_VARS: dict[str, contextvars.ContextVar[Any]] = {
    "search_id": search_id_var,
    "attempt": attempt_var,
    "request_id": request_id_var,
}

# The loggers of the servers we run, which would otherwise write with handlers of their own.
THIRD_PARTY_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "celery", "celery.task", "celery.worker")

# The attributes every LogRecord has: anything else on a record was passed with `extra=`.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", *_VARS}


def bind_log_context(**values: Any) -> None:
    """Set `search_id`, `attempt` and/or `request_id` for what this context (thread, task) logs next."""
    for name, value in values.items():
        _VARS[name].set(value)


def clear_log_context() -> None:
    for var in _VARS.values():
        var.set(None)


@contextmanager
def log_context(**values: Any) -> Iterator[None]:
    """`bind_log_context` for the duration of a block; the previous values come back after it."""
    tokens = [(_VARS[name], _VARS[name].set(value)) for name, value in values.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


class ContextFilter(logging.Filter):
    """Copies the context variables onto every record (attributes `search_id`, `attempt`, `request_id`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in _VARS.items():
            if getattr(record, name, None) is None:
                setattr(record, name, var.get())
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (UTC, ISO 8601), level, logger, message, the context, extras,
    and the traceback as `exc_info` when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "search_id": getattr(record, "search_id", None),
            "attempt": getattr(record, "attempt", None),
            "request_id": getattr(record, "request_id", None),
            "process": record.processName if record.processName != "MainProcess" else record.process,
        }
        for key, value in vars(record).items():
            if key not in _RECORD_ATTRIBUTES and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger [search=... attempt=... request=...] message`, the brackets only when set."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            f"{label}={value}"
            for label, value in (
                ("search", getattr(record, "search_id", None)),
                ("attempt", getattr(record, "attempt", None)),
                ("request", getattr(record, "request_id", None)),
            )
            if value is not None
        ]
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return super().format(record)


def wants_json(log_format: str | None, stream: TextIO | None = None) -> bool:
    """Whether `log_format` (LOG_FORMAT) means JSON lines on `stream` (default stderr)."""
    return _wants_json(log_format, stream or sys.stderr)


def _wants_json(log_format: str | None, stream: TextIO) -> bool:
    if log_format:
        if log_format.lower() not in ("json", "text"):
            raise ValueError(f"LOG_FORMAT must be 'json' or 'text', not {log_format!r}")
        return log_format.lower() == "json"
    return not (hasattr(stream, "isatty") and stream.isatty())


class _OurHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic in typeshed only
    """The handler `configure_logging` installs (a second call replaces it). Without a stream of its
    own it writes to whatever `sys.stderr` is at each record (pytest swaps it per test)."""

    def __init__(self, stream: TextIO | None) -> None:
        super().__init__(stream or sys.stderr)
        self.follow_stderr = stream is None

    def emit(self, record: logging.LogRecord) -> None:
        if self.follow_stderr:
            self.stream = sys.stderr
        super().emit(record)


def logging_configured() -> bool:
    """Whether `configure_logging` already ran in this process."""
    return any(isinstance(handler, _OurHandler) for handler in logging.getLogger().handlers)


def configure_logging(
    level: str | int = "INFO", log_format: str | None = None, stream: TextIO | None = None
) -> None:
    """Route every log record of this process through one handler on the root logger.

    Idempotent (a second call replaces our handler, and leaves others, e.g. pytest's, alone). The
    third-party servers' loggers lose their own handlers and propagate to it.
    """
    handler = _OurHandler(stream)
    as_json = _wants_json(log_format, stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if as_json else TextFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _OurHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    for name in THIRD_PARTY_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
        # A dictConfig or a server's log level elsewhere in the process (uvicorn's own config, with
        # disable_existing_loggers and a level per logger) may have switched them off or raised their
        # level: they follow the root logger again.
        logger.disabled = False
        logger.setLevel(logging.NOTSET)
    # Python's warnings (e.g. Celery's about running as root) become records too.
    logging.captureWarnings(True)
