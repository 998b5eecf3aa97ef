"""The worker's logging: our formatter for Celery's loggers, and each task's search id and attempt.

Celery imports this module in the worker only (the app's `include`). Connecting `setup_logging`
stops Celery from installing its own handlers: every line (Celery's, the task's, darts_core's) goes
through `app.logging_config` (LOG_FORMAT). The search id is bound when a task starts and cleared
when it ends; the run binds the attempt once it holds the lease.
"""

from __future__ import annotations

from typing import Any

from celery import signals

from app.logging_config import bind_log_context, clear_log_context, configure_logging
from app.queue import RUN_SEARCH_TASK, RUN_TRAINING_TASK
from app.settings import get_settings


@signals.setup_logging.connect
def _setup_logging(loglevel: Any = None, **_kwargs: Any) -> None:
    configure_logging(loglevel or "INFO", get_settings().log_format)


@signals.task_prerun.connect
def _bind_task(sender: Any = None, args: Any = None, kwargs: Any = None, **_: Any) -> None:
    clear_log_context()
    if getattr(sender, "name", None) in (RUN_SEARCH_TASK, RUN_TRAINING_TASK):
        # The job's id (a search's or a training's) goes into the `search_id` log field.
        search_id = (args or [None])[0] if args else (kwargs or {}).get("search_id")
        bind_log_context(search_id=search_id)


@signals.task_postrun.connect
def _clear_task(**_: Any) -> None:
    clear_log_context()
