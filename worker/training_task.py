"""The Celery task `darts.run_training(training_id)`: a thin shell around `worker.training_run.TrainingRun`.

It shares the searches' queue and worker (one job at a time, acked late); a duplicate copy of the task
finds the lease held or the training finished and does nothing (`app.lifecycle.start`).
"""

from __future__ import annotations

import redis
from celery import shared_task
from celery.exceptions import Reject
from sqlalchemy.exc import SQLAlchemyError

from app.queue import RUN_TRAINING_TASK
from app.settings import get_settings
from worker.job_run import HandedBack
from worker.training_run import TrainingRun


@shared_task(
    name=RUN_TRAINING_TASK,
    acks_late=True,
    ignore_result=True,
    # As run_search: the database or Redis unreachable before the training could start is retried.
    autoretry_for=(SQLAlchemyError, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=2,
    retry_backoff_max=60,
    max_retries=None,
)
def run_training_task(training_id: str) -> str:
    """Run training `training_id` (see worker.job_run for the lease and the events)."""
    try:
        return TrainingRun(get_settings(), training_id).execute()
    except HandedBack as handed_back:
        raise Reject(str(handed_back), requeue=True) from None
