"""The workers' Celery application: the service's queue configuration plus the `run_search` task.

Importing this module must stay cheap and must never import torch: a GPU worker's parent process
must not initialise CUDA before it forks (the task imports torch when it runs).
"""

from __future__ import annotations

from celery import Celery

from app.queue import create_celery_app
from app.settings import Settings


def create_worker_app(settings: Settings | None = None) -> Celery:
    return create_celery_app(settings, include=["worker.task"])
