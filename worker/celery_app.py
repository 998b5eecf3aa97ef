"""The workers' Celery application: the service's queue configuration plus the `run_search` and
`run_training` tasks.

Importing this module must stay cheap and must never import torch: a GPU worker's parent process
must not initialise CUDA before it forks (the task imports torch when it runs).
"""

from __future__ import annotations

from celery import Celery

from app.queue import create_celery_app
from app.settings import Settings


def create_worker_app(settings: Settings | None = None) -> Celery:
    # worker.health (liveness file and heartbeat) and worker.logs (our log formatter and context)
    # connect Celery signals when imported: only the worker imports them.
    return create_celery_app(
        settings, include=["worker.search_task", "worker.training_task", "worker.health", "worker.logs"]
    )


def __getattr__(name: str) -> Celery:
    """`worker.celery_app:app`, built on first access from the environment, for Celery's own tools
    (`celery -A worker.celery_app:app flower`, `... inspect active`); the service calls the factory."""
    if name == "app":
        return create_worker_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
