"""The task queue as the API and the lifecycle see it: sending `run_search` / `run_training` by name,
and reading which jobs have a task message waiting in the broker.

The workers' Celery application (`worker.celery_app`) is this same configuration plus the task
itself; nothing here imports the worker or torch, so the API process stays light.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterable

import redis
from celery import Celery

from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

RUN_SEARCH_TASK = "darts.run_search"
RUN_TRAINING_TASK = "darts.run_training"


def broker_url(redis_url: str) -> str:
    """Celery's spelling of a Redis URL: unix sockets are `redis+socket://<path>`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url[len("unix://") :]
    return redis_url


def celery_key_prefix(settings: Settings) -> str:
    """The prefix of every key the Celery Redis transport writes (queues, unacked messages)."""
    return f"{settings.redis_prefix}:celery:"


def create_celery_app(settings: Settings | None = None, *, include: Iterable[str] = ()) -> Celery:
    """A Celery app configured for our broker: one task at a time, acked late, prefetch 1."""
    settings = settings or get_settings()
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set: start the stack with `darts-service up` or set REDIS_URL")
    app = Celery("darts", broker=broker_url(settings.redis_url))
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
            # Celery's Redis transport redelivers an unacknowledged task after this many seconds even
            # while it still runs (celery issue 5935): keep it above the longest search.
            "visibility_timeout": settings.broker_visibility_timeout,
            "global_keyprefix": celery_key_prefix(settings),
        },
        task_ignore_result=True,
        include=list(include),
    )
    return app


def enqueue_task(celery: Celery, task: str, job_id: str, settings: Settings | None = None) -> str:
    """Send `task(job_id)` (RUN_SEARCH_TASK or RUN_TRAINING_TASK) to the jobs queue; returns the Celery
    task id."""
    settings = settings or get_settings()
    result = celery.send_task(task, args=[job_id], queue=settings.celery_queue)
    return str(result.id)


def enqueue_search(celery: Celery, search_id: str, settings: Settings | None = None) -> str:
    """Send `run_search(search_id)` to the jobs queue; returns the Celery task id."""
    return enqueue_task(celery, RUN_SEARCH_TASK, search_id, settings)


def _job_id_of(raw: str | bytes, task: str) -> str | None:
    """The job id argument of one serialized kombu message of `task` (None for anything else)."""
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != task:
            return None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return str(args[0]) if args else None
    except (ValueError, KeyError, TypeError, IndexError):
        return None


def queued_search_ids(client: redis.Redis, settings: Settings, task: str = RUN_SEARCH_TASK) -> set[str]:
    """Job ids of every `task` message (by default `run_search`) in the broker: waiting in the queue, or
    delivered to a worker and not yet acknowledged (the transport's `unacked` hash)."""
    prefix = celery_key_prefix(settings)
    raw: list[str | bytes] = list(client.lrange(prefix + settings.celery_queue, 0, -1))
    for value in client.hvals(prefix + "unacked"):
        try:
            raw.append(json.dumps(json.loads(value)[0]))  # [message, exchange, routing key]
        except (ValueError, IndexError, TypeError):
            continue
    return {job_id for item in raw if (job_id := _job_id_of(item, task)) is not None}
