"""What the Celery tasks of every job kind share: their options, and a run that gives its job back.

Both tasks (`worker.search_task`, `worker.training_task`) run one job in this process, acked late. The
database or Redis unreachable before the job could start is retried later rather than acked away (the
reconciler would re-send it, but later).
"""

from __future__ import annotations

from typing import Any

import redis
from celery.exceptions import Reject
from sqlalchemy.exc import SQLAlchemyError

from worker.job_run import HandedBack, JobRun

JOB_TASK_OPTIONS: dict[str, Any] = {
    "acks_late": True,
    "ignore_result": True,
    "autoretry_for": (SQLAlchemyError, redis.ConnectionError, redis.TimeoutError),
    "retry_backoff": 2,
    "retry_backoff_max": 60,
    "max_retries": None,
}


def execute_or_requeue(run: JobRun) -> str:
    """`run.execute()`; a run handed back by a warm shutdown goes back to the queue (Reject, requeue)."""
    try:
        return run.execute()
    except HandedBack as handed_back:
        raise Reject(str(handed_back), requeue=True) from None
