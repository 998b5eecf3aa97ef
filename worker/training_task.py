"""The Celery task `darts.run_training(training_id)`: a thin shell around `worker.training_run.TrainingRun`.

It shares the searches' queue and worker (one job at a time, acked late); a duplicate copy of the task
finds the lease held or the training finished and does nothing (`app.lifecycle.start`).
"""

from __future__ import annotations

from celery import shared_task

from app.queue import RUN_TRAINING_TASK
from app.settings import get_settings
from worker.task_options import JOB_TASK_OPTIONS, execute_or_requeue
from worker.training_run import TrainingRun


@shared_task(name=RUN_TRAINING_TASK, **JOB_TASK_OPTIONS)
def run_training_task(training_id: str) -> str:
    """Run training `training_id` (see worker.job_run for the lease and the events)."""
    return execute_or_requeue(TrainingRun(get_settings(), training_id))
