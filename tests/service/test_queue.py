"""app.queue against the session's real Redis: the reconciler reads which searches have a message."""

from __future__ import annotations

import uuid

import pytest
import redis

from app.queue import celery_key_prefix, create_celery_app, enqueue_search, queued_search_ids
from app.settings import Settings


@pytest.fixture
def own_queue(service_settings: Settings):
    settings = service_settings.model_copy(update={"celery_queue": f"queue-{uuid.uuid4().hex[:8]}"})
    client = redis.Redis.from_url(settings.redis_url)
    yield settings, client
    client.delete(celery_key_prefix(settings) + settings.celery_queue)
    client.close()


def test_queued_search_ids_lists_waiting_and_unacked_messages(own_queue) -> None:
    settings, client = own_queue
    celery = create_celery_app(settings)
    waiting = [str(uuid.uuid4()) for _ in range(3)]
    for search_id in waiting:
        enqueue_search(celery, search_id, settings)
    assert set(waiting) <= queued_search_ids(client, settings)

    # A worker took one (kombu moves it to the `unacked` hash until the task is acknowledged).
    queue_key = celery_key_prefix(settings) + settings.celery_queue
    taken = client.rpop(queue_key)
    unacked_key = celery_key_prefix(settings) + "unacked"
    tag = f"test-{uuid.uuid4().hex}"
    client.hset(unacked_key, tag, b'[' + taken + b', "", "' + settings.celery_queue.encode() + b'"]')
    try:
        assert set(waiting) <= queued_search_ids(client, settings)
        client.lpush(queue_key, b'{"not": "a celery message"}', b"garbage")
        assert set(waiting) <= queued_search_ids(client, settings)
    finally:
        client.hdel(unacked_key, tag)
    assert str(uuid.uuid4()) not in queued_search_ids(client, settings)
