"""Cancel: a running search stops between batches within seconds; a queued one never starts."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from app.settings import Settings

from .conftest import finish, get_search, submit, tiny_spec, wait_for_status, wait_until
from .test_search_flow import stream_events

LONG_EPOCHS = 200  # far more than any test waits for: only a cancel ends these searches


def test_cancel_a_running_search(api: TestClient, running_worker, stack_settings: Settings) -> None:
    search_id = submit(api, tiny_spec(epochs=LONG_EPOCHS, name="to cancel while running"))["id"]
    try:
        # Wait until it is inside the search loop (first epoch done), not still importing torch.
        wait_until(lambda: get_search(api, search_id)["epoch"] >= 1, 120, "the first epoch")
        asked = time.monotonic()
        response = api.post(f"/searches/{search_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "cancelling"
        final = wait_for_status(api, search_id, {"cancelled", "succeeded", "failed"}, timeout=60)
        took = time.monotonic() - asked
    finally:
        finish(api, search_id)
    assert final["status"] == "cancelled", final
    assert final["epoch"] < LONG_EPOCHS and final["finished_at"] is not None
    events = stream_events(stack_settings, search_id)
    statuses = [event.status for _, event in events if event.type == "status"]
    assert statuses == ["running", "cancelled"]
    print(f"\ncancel of a running search: cancelled {took:.2f} s after POST /cancel")

    # Cancelling again is idempotent; the search keeps its state.
    again = api.post(f"/searches/{search_id}/cancel")
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


def test_cancel_a_queued_search_never_starts_it(
    api: TestClient, running_worker, stack_settings: Settings
) -> None:
    busy_id = submit(api, tiny_spec(epochs=LONG_EPOCHS, name="keeps the worker busy"))["id"]
    queued_id = None
    try:
        wait_for_status(api, busy_id, {"running"}, timeout=60)
        queued_id = submit(api, tiny_spec(epochs=2, name="cancelled while queued"))["id"]
        assert get_search(api, queued_id)["status"] == "queued"  # the only worker is busy
        assert _queue_length(stack_settings) == 1
        response = api.post(f"/searches/{queued_id}/cancel")
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "cancelled"
    finally:
        finish(api, busy_id)
    # The worker is free again and has had the queued task: it discarded it as revoked, or ran it and
    # returned at once on seeing the row cancelled (its log names the task either way).
    task_id = get_search_row_task(stack_settings, queued_id)
    wait_until(lambda: _queue_length(stack_settings) == 0, 30, "the worker to take the cancelled task")
    wait_until(lambda: task_id in running_worker.log(), 30, "the worker to have handled the cancelled task")
    search = get_search(api, queued_id)
    assert search["status"] == "cancelled"
    assert search["started_at"] is None and search["epoch"] == 0
    assert [event for _, event in stream_events(stack_settings, queued_id) if event.type == "epoch"] == []
    assert api.get(f"/searches/{queued_id}/epochs").json()["items"] == []


def get_search_row_task(settings: Settings, search_id: str) -> str:
    """The Celery task id the API recorded for `search_id`."""
    from app.db import make_engine, make_session_factory
    from app.models import Search

    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            search = session.get(Search, search_id)
            assert search is not None and search.celery_task_id
            return search.celery_task_id
    finally:
        engine.dispose()


def _queue_length(settings: Settings) -> int:
    """Tasks waiting in the Celery queue (a Redis list under the run's key prefix)."""
    import redis

    client = redis.Redis.from_url(settings.redis_url)
    try:
        return client.llen(f"{settings.redis_prefix}:celery:{settings.celery_queue}")
    finally:
        client.close()
