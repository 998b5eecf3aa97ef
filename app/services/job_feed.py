"""Server-Sent Events of searches and trainings: one SQL poller per followed job, shared by all its
streams.

A stream used to poll SQL itself every 0.5 s in the thread pool: 50 followers of one search made 100
queries a second and took threads and connections from the requests. Now the followers of a search
share a `_Feed`: whichever follower finds it older than the poll interval reads what is new (status,
then the epochs after the last one seen) under the feed's lock and a database gate slot, and every
follower sends from that cache. One query per followed search per interval and per announced change
(at most one at a time), however many follow it.

A change announced for a followed job (an epoch the ingester stored: `announce`, from
app.events.changes) wakes its followers, and the first up polls at once instead of at the end of the
interval: under issue 10's load an epoch reached SSE followers 310 ms after its end at p50 (the
interval's half), 630 ms at p99. The interval stays as the pace when announcements are lost. (A study's
stream, app.services.study_feed, polls on its own at the interval.)
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker

from app.db_gate import DatabaseGate
from app.lifecycle.status import TERMINAL, Status
from app.models import Search, Training
from app.schemas.searches import EpochPublic, StatusPayload
from app.schemas.trainings import TrainingEpochPublic
from app.services import searches as search_service
from app.services import trainings as training_service
from app.services.errors import TooManyRequests

#: An epoch as an SSE `epoch` event carries it (a search's or a training's).
EpochRecord = EpochPublic | TrainingEpochPublic

# When an owner at MAX_SSE_STREAMS_PER_OWNER is told to try again.
STREAMS_RETRY_AFTER_SECONDS = 5


@dataclass
class _Feed:
    """What is known of one search: its status and its epochs, in epoch order."""

    status: StatusPayload | None = None
    epochs: list[int] = field(default_factory=list)
    records: list[tuple[str, EpochRecord]] = field(default_factory=list)
    gone: bool = False
    polled_at: float = -math.inf
    changed: bool = False  # announced since the last poll began: poll again without waiting
    woken: anyio.Event = field(default_factory=anyio.Event)  # set (and replaced) by each announcement
    followers: int = 0
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    def after(self, epoch: int) -> list[tuple[str, EpochRecord]]:
        return self.records[bisect.bisect_right(self.epochs, epoch) :]


def _poll(
    factory: sessionmaker[Session], kind: str, job_id: str, after_epoch: int
) -> tuple[StatusPayload | None, list[tuple[str, EpochRecord]]]:
    with factory() as session:
        job: Search | Training | None = (
            session.get(Training, job_id) if kind == "training" else session.get(Search, job_id)
        )
        if job is None:  # deleted while followed
            return None, []
        # The status is read before the epochs: a terminal status is written after the last epoch,
        # so once a poll sees it, the same poll sees every epoch.
        current = StatusPayload(status=Status(job.status), error=job.error)
        records: list[tuple[str, EpochRecord]]
        if kind == "training":
            rows = training_service.list_epochs(session, job_id, after=after_epoch)
            records = [(r.stream_id or str(r.epoch), TrainingEpochPublic.model_validate(r)) for r in rows]
        else:
            found = search_service.list_epochs(session, job_id, after=after_epoch)
            records = [(r.stream_id or str(r.epoch), EpochPublic.model_validate(r)) for r in found]
        return current, records


def _wake(feed: _Feed) -> None:
    feed.woken.set()
    feed.woken = anyio.Event()


class JobFeeds:
    """The feeds of the jobs (searches, trainings) followed through this API process."""

    def __init__(self, factory: sessionmaker[Session], gate: DatabaseGate) -> None:
        self._factory = factory
        self._gate = gate
        self._feeds: dict[tuple[str, str], _Feed] = {}

    @property
    def followed(self) -> int:
        """Searches with at least one open stream (one poller each)."""
        return len(self._feeds)

    def announce(self, job_id: str) -> None:
        """`job_id` changed: wake its followers to poll now (on the event loop)."""
        for kind in ("search", "training"):
            feed = self._feeds.get((kind, job_id))
            if feed is not None:
                feed.changed = True
                _wake(feed)

    async def _refresh(self, key: tuple[str, str], feed: _Feed, poll_seconds: float) -> None:
        async with feed.lock:
            if not feed.changed and anyio.current_time() - feed.polled_at < poll_seconds:
                return  # another follower has just polled
            feed.changed = False  # an announcement while this poll reads makes the next one poll too
            last = feed.epochs[-1] if feed.epochs else 0
            async with self._gate.slot():
                current, records = await run_in_threadpool(_poll, self._factory, *key, last)
            feed.polled_at = anyio.current_time()
            if current is None:
                feed.gone = True
                return
            for event_id, record in records:
                feed.epochs.append(record.epoch)
                feed.records.append((event_id, record))
            news = bool(records) or current != feed.status
            feed.status = current
            if news:  # followers that went to wait while this poll read: send it now
                _wake(feed)

    async def stream(
        self, search_id: str, after: int, poll_seconds: float, kind: str = "search"
    ) -> AsyncIterator[dict[str, str]]:
        """`epoch` events after epoch `after`, and a `status` event first and on every change; ends after a
        terminal status, or when the job (`kind`: "search" or "training") is deleted."""
        key = (kind, search_id)
        feed = self._feeds.setdefault(key, _Feed())
        feed.followers += 1
        try:
            sent_status: StatusPayload | None = None
            while True:
                await self._refresh(key, feed, poll_seconds)
                if feed.gone or feed.status is None:
                    return
                current = feed.status
                for event_id, record in feed.after(after):
                    yield {"event": "epoch", "id": event_id, "data": record.model_dump_json()}
                    after = record.epoch
                if current != sent_status:
                    yield {"event": "status", "data": json.dumps(current.model_dump())}
                    sent_status = current
                if current.status in TERMINAL:
                    return
                # Wait until the feed is due again, a change is announced, or another follower's poll
                # brought news (it may have while this one was sending): the first up polls, the
                # others read.
                if not feed.changed and not feed.after(after) and feed.status == sent_status:
                    with anyio.move_on_after(feed.polled_at + poll_seconds - anyio.current_time()):
                        await feed.woken.wait()
        finally:
            feed.followers -= 1
            if feed.followers == 0 and self._feeds.get(key) is feed:
                del self._feeds[key]


class OpenStreams:
    """Open event streams per owner in this process, capped (MAX_SSE_STREAMS_PER_OWNER)."""

    def __init__(self) -> None:
        self._count: dict[str, int] = {}

    def count(self, owner: str) -> int:
        return self._count.get(owner, 0)

    def open(self, owner: str, limit: int) -> _StreamTicket:
        """A ticket for one more stream of `owner`; TooManyRequests (429) when `limit` are open."""
        if self.count(owner) >= limit:
            raise TooManyRequests(
                f"you have {limit} event streams open, the most allowed (MAX_SSE_STREAMS_PER_OWNER): "
                "close one, or poll GET /searches/{id}",
                retry_after=STREAMS_RETRY_AFTER_SECONDS,
            )
        self._count[owner] = self.count(owner) + 1
        return _StreamTicket(self, owner)

    def _close(self, owner: str) -> None:
        remaining = self.count(owner) - 1
        if remaining > 0:
            self._count[owner] = remaining
        else:
            self._count.pop(owner, None)


class _StreamTicket:
    def __init__(self, streams: OpenStreams, owner: str) -> None:
        self._streams = streams
        self._owner = owner
        self._open = True

    def close(self) -> None:
        """Idempotent: called when the stream ends and again after the response."""
        if self._open:
            self._open = False
            self._streams._close(self._owner)

    async def wrap(self, events: AsyncIterator[dict[str, str]]) -> AsyncIterator[dict[str, str]]:
        """`events`, closing this ticket when they end or the client goes away."""
        try:
            async for event in events:
                yield event
        finally:
            self.close()
