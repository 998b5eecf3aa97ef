"""`GET /searches/{id}/events`: Server-Sent Events read from SQL, resumable with Last-Event-ID."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from fastapi.testclient import TestClient

from app.events.changes import announce_change
from darts_core.client.sse import iter_sse

from .conftest import epoch_genotype


def sse_events(response: httpx.Response) -> Iterator[dict]:
    """The events of a text/event-stream as {"event", "id", "data"} dicts, read with `darts_core.client.sse`
    (the client's parser: `id` is the stream's last event id, as a browser keeps it)."""
    for event in iter_sse(response.iter_lines()):
        yield {"event": event.event, "id": event.id, "data": event.json()}


@pytest.fixture
def fast_client(client: TestClient) -> TestClient:
    client.app.state.sse_poll_seconds = 0.05
    return client


def create(client: TestClient) -> str:
    response = client.post("/searches", json={"dataset": {"name": "digits"}, "training": {"epochs": 3}})
    assert response.status_code == 201
    return response.json()["id"]


def test_a_finished_search_streams_every_epoch_then_its_status_and_ends(
    fast_client: TestClient, record_epochs
) -> None:
    search_id = create(fast_client)
    record_epochs(search_id, 3, status="succeeded")
    with fast_client.stream("GET", f"/searches/{search_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    # The status event carries no id of its own: the stream's last id stays the last epoch's.
    assert [(event["event"], event.get("id")) for event in events] == [
        ("epoch", "1700000000001-0"),
        ("epoch", "1700000000002-0"),
        ("epoch", "1700000000003-0"),
        ("status", "1700000000003-0"),
    ]
    assert [event["data"]["epoch"] for event in events[:3]] == [1, 2, 3]
    assert events[1]["data"]["genotype"] == epoch_genotype(2)
    assert events[1]["data"]["train_loss"] == 1.0
    assert events[3]["data"] == {"status": "succeeded", "error": None}


def test_resume_after_last_event_id_header_or_query(fast_client: TestClient, record_epochs) -> None:
    search_id = create(fast_client)
    record_epochs(search_id, 3, status="succeeded")
    url = f"/searches/{search_id}/events"

    with fast_client.stream("GET", url, headers={"Last-Event-ID": "1700000000001-0"}) as response:
        header_resumed = list(sse_events(response))
    assert [event.get("id") for event in header_resumed] == [
        "1700000000002-0", "1700000000003-0", "1700000000003-0"
    ]

    with fast_client.stream("GET", url, params={"last_event_id": "1700000000003-0"}) as response:
        query_resumed = list(sse_events(response))
    assert [event["event"] for event in query_resumed] == ["status"]

    with fast_client.stream("GET", url, params={"last_event_id": "2"}) as response:  # an epoch number
        assert [event["data"].get("epoch") for event in sse_events(response)] == [3, None]

    for foreign_id in ("1600000000000-0", "9" * 30):
        foreign = fast_client.get(url, headers={"Last-Event-ID": foreign_id})
        assert foreign.status_code == 422
        assert "is not an event of search" in foreign.json()["detail"][0]["msg"]


def test_a_live_search_streams_new_epochs_and_status_changes_until_it_ends(
    fast_client: TestClient, record_epochs, set_status
) -> None:
    search_id = create(fast_client)
    set_status(search_id, "running")
    record_epochs(search_id, 1)
    seen = []
    with fast_client.stream("GET", f"/searches/{search_id}/events") as response:
        events = sse_events(response)
        seen.append(next(events))  # epoch 1
        seen.append(next(events))  # status running
        record_epochs(search_id, [2])
        seen.append(next(events))  # epoch 2, found by polling
        set_status(search_id, "cancelling")
        seen.append(next(events))
        record_epochs(search_id, [3])
        set_status(search_id, "cancelled")
        seen.extend(events)  # epoch 3, then the terminal status ends the stream
    assert [(event["event"], event["data"].get("epoch", event["data"].get("status"))) for event in seen] == [
        ("epoch", 1),
        ("status", "running"),
        ("epoch", 2),
        ("status", "cancelling"),
        ("epoch", 3),
        ("status", "cancelled"),
    ]


def test_open_streams_per_owner_are_capped_with_429_and_freed_when_a_stream_ends(
    fast_client: TestClient, set_status, record_epochs, api_owner: str
) -> None:
    app = fast_client.app
    app.state.settings = app.state.settings.model_copy(update={"max_sse_streams_per_owner": 1})
    search_id = create(fast_client)
    set_status(search_id, "running")
    url = f"/searches/{search_id}/events"
    with fast_client.stream("GET", url) as first:
        assert first.status_code == 200
        events = sse_events(first)
        assert next(events)["data"] == {"status": "running", "error": None}
        refused = fast_client.get(url)
        assert refused.status_code == 429
        assert "MAX_SSE_STREAMS_PER_OWNER" in refused.json()["detail"]
        assert int(refused.headers["Retry-After"]) > 0
        record_epochs(search_id, [1], status="succeeded")
        # The first stream ends with the terminal status, which frees its place.
        assert [event["event"] for event in events] == ["epoch", "status"]
    with fast_client.stream("GET", url) as again:
        assert again.status_code == 200
        assert [event["event"] for event in sse_events(again)] == ["epoch", "status"]
    assert app.state.open_streams.count(api_owner) == 0 and not app.state.job_feeds.followed


def test_followers_of_one_search_share_one_feed(fast_client: TestClient, set_status, record_epochs) -> None:
    search_id = create(fast_client)
    set_status(search_id, "running")
    url = f"/searches/{search_id}/events"
    feeds = fast_client.app.state.job_feeds
    with fast_client.stream("GET", url) as first, fast_client.stream("GET", url) as second:
        one, two = sse_events(first), sse_events(second)
        assert next(one)["event"] == next(two)["event"] == "status"
        assert feeds.followed == 1  # two streams, one poller
        record_epochs(search_id, [1, 2], status="succeeded")
        assert list(one) == list(two)
    assert feeds.followed == 0


def test_an_announced_change_wakes_the_followers_before_their_poll_is_due(
    client: TestClient, record_epochs, set_status
) -> None:
    """With a poll due only every 40 s, an epoch announced on Redis (as the ingester announces each event
    it stores) reaches the stream at once: the announcement wakes the feed."""
    client.app.state.sse_poll_seconds = 40.0
    search_id = create(client)
    set_status(search_id, "running")
    stop = threading.Event()

    def announce_until_stopped() -> None:  # again and again: the listener may not be subscribed yet
        while not stop.wait(0.2):
            announce_change(client.app.state.redis, client.app.state.settings, search_id)

    announcer = threading.Thread(target=announce_until_stopped, daemon=True)
    with client.stream("GET", f"/searches/{search_id}/events") as response:
        events = sse_events(response)
        assert next(events)["data"]["status"] == "running"
        record_epochs(search_id, [1])
        started = time.monotonic()
        announcer.start()
        try:
            epoch = next(events)
        finally:
            stop.set()
            announcer.join()
    waited = time.monotonic() - started
    assert (epoch["event"], epoch["data"]["epoch"]) == ("epoch", 1)
    assert waited < 20, f"the epoch came after {waited:.0f} s: with the poll, not the announcement"


def test_a_poll_that_brings_news_wakes_the_followers_already_waiting(monkeypatch) -> None:
    """A follower that went to wait while another was polling must not sleep out the interval: the poll
    that brought an epoch wakes it (here a follower waits with the next poll a minute away, and another
    follower's poll finds the epoch)."""
    import math
    from dataclasses import dataclass

    from app.db_gate import DatabaseGate
    from app.lifecycle.status import Status
    from app.schemas.searches import StatusPayload
    from app.services import job_feed

    @dataclass
    class Epoch:  # what a feed needs of a record
        epoch: int

        def model_dump_json(self) -> str:
            return f'{{"epoch": {self.epoch}}}'

    stored: list[tuple[str, Epoch]] = []

    def poll(_factory, _kind, _job_id, after_epoch):
        news = [(entry_id, e) for entry_id, e in stored if e.epoch > after_epoch]
        return StatusPayload(status=Status.running, error=None), news

    monkeypatch.setattr(job_feed, "_poll", poll)
    feeds = job_feed.JobFeeds(None, DatabaseGate(1))  # type: ignore[arg-type]

    async def scenario() -> tuple[dict, dict]:
        waiting = feeds.stream("s1", 0, poll_seconds=60)
        assert (await anext(waiting))["event"] == "status"
        next_event = asyncio.ensure_future(anext(waiting))
        await asyncio.sleep(0.1)
        assert not next_event.done()  # nothing new, the next poll a minute away
        stored.append(("1-0", Epoch(1)))
        feeds._feeds[("search", "s1")].polled_at = -math.inf  # due for the next follower up
        other = feeds.stream("s1", 0, poll_seconds=60)
        polled = await anext(other)  # this follower's poll finds epoch 1
        woken = await asyncio.wait_for(next_event, 10)
        await waiting.aclose()
        await other.aclose()
        return polled, woken

    polled, woken = asyncio.run(scenario())
    assert polled == woken == {"event": "epoch", "id": "1-0", "data": '{"epoch": 1}'}
