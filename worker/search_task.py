"""The Celery task `darts.run_search(search_id)`: a thin shell around `worker.search_run.SearchRun`.

A worker runs one search at a time (`--pool=solo`, `--concurrency=1`, prefetch 1, `acks_late`). A
second copy of the task (the Redis transport redelivers unacknowledged tasks after the visibility
timeout, even while they run; the reconciler may send one too) finds the lease held or the search
finished and returns without running anything.
"""

from __future__ import annotations

from typing import Any

from celery import shared_task
from celery.signals import worker_shutting_down

from app.queue import RUN_SEARCH_TASK
from app.settings import get_settings
from worker.job_run import worker_shutting_down as shutting_down_flag
from worker.search_run import SearchRun
from worker.task_options import JOB_TASK_OPTIONS, execute_or_requeue


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    shutting_down_flag.set()


@shared_task(name=RUN_SEARCH_TASK, **JOB_TASK_OPTIONS)
def run_search_task(search_id: str) -> str:
    """Run search `search_id` (see worker.search_run for the lease and the events)."""
    return execute_or_requeue(SearchRun(get_settings(), search_id))
