"""The Celery application shared by the API (which enqueues) and the workers (which run searches).

Importing this module must stay cheap and must never import torch: the API process imports it to
enqueue, and a GPU worker's parent process must not initialise CUDA before it forks.
"""

from __future__ import annotations

from celery import Celery

from app.settings import Settings, get_settings

RUN_SEARCH_TASK = "darts.run_search"


def broker_url(redis_url: str) -> str:
    """Celery's spelling of a Redis URL: unix sockets are `redis+socket://<path>`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://") :]
    return redis_url


def create_celery_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set: start the stack with `darts-service up` or set REDIS_URL")
    url = broker_url(settings.redis_url)
    app = Celery("darts", broker=url)
    app.conf.update(
        task_default_queue=settings.celery_queue,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "global_keyprefix": f"{settings.redis_prefix}:celery:",
        },
        task_ignore_result=True,
        include=["worker.tasks", "worker.health", "worker.logs"],
    )
    return app


def enqueue_search(celery: Celery, search_id: str, settings: Settings | None = None) -> str:
    """Send `run_search(search_id)` to the searches queue; returns the Celery task id."""
    settings = settings or get_settings()
    result = celery.send_task(RUN_SEARCH_TASK, args=[search_id], queue=settings.celery_queue)
    return result.id


def __getattr__(name: str) -> Celery:
    """`worker.celery_app:app`, built on first access from the environment, for Celery's own tools
    (`celery -A worker.celery_app:app flower`, `... inspect active`); the service calls the factory."""
    if name == "app":
        return create_celery_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
