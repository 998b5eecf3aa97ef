"""The ingester: Redis Stream events -> SQL, plus the lifecycle's sweeps.

Workers append one entry per finished epoch and per status change to `{REDIS_PREFIX}:events`. The
ingester reads the stream through the consumer group `ingesters` and applies every event with
`app.lifecycle.projection.apply_event`, which is idempotent, so an entry delivered twice (a claimed
entry of a dead consumer, a duplicate XADD of a retrying worker) changes nothing the second time.

Where it runs: inside the API process (a thread started by the app's lifespan, so the one-machine
stack needs no extra process) and/or as its own process (`darts-service ingest`). Any number may run
at once: the group hands each entry to one consumer, and XAUTOCLAIM moves entries a dead consumer left
to a live one.

Supervision: any error in a round (Redis or the database unreachable, the stream or group deleted,
a full disk on the Redis side) is logged and the round retried with backoff; the group is recreated
when it is gone. An entry is dead-lettered only when the database answers and still refuses it:
while the database is down, entries stay pending however long that lasts.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.event_metrics import EVENTS_INGESTED, observe_stored
from app.events.changes import announce_change
from app.events.schema import JobEvent, parse_event
from app.lifecycle import sweep
from app.lifecycle.cancel import cancel_key
from app.lifecycle.kinds import KINDS, JobKind
from app.lifecycle.projection import apply_event
from app.lifecycle.status import TERMINAL
from app.logging_config import bind_log_context, clear_log_context
from app.queue import create_celery_app, enqueue_task, queued_search_ids
from app.redis import get_redis
from app.services.study_advance import StudyDeps, advance_study, advance_unfinished
from app.settings import Settings

logger = logging.getLogger(__name__)

CONSUMER_GROUP = "ingesters"

def consumer_name() -> str:
    """A name unique to this process and start: `hostname:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def dead_letter_stream(settings: Settings) -> str:
    return f"{settings.events_stream}:dead"


class DatabaseUnavailable(Exception):
    """The database did not answer: entries stay pending and the round is retried later."""


@dataclass
class IngesterStats:
    stored: int = 0
    duplicates: int = 0
    stale: int = 0
    fenced: int = 0
    orphans: int = 0
    malformed: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    requeued_searches: int = 0
    reconciled_searches: int = 0
    errors: int = 0
    last_round_at: float = field(default_factory=time.monotonic)


def _is_unavailable(exc: SQLAlchemyError) -> bool:
    """Whether `exc` says the database is unreachable or busy (retry), not that it refused the data."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, OperationalError)


class Ingester:
    """One consumer of the group `ingesters`: reads events and writes them into SQL.

    `run_once()` does one round: claim entries idle for `claim_idle_ms` (every `claim_idle_ms / 2`),
    read new entries (blocking up to `block_ms`), then, once caught up, run the lease sweep and the
    queue reconciler every `sweep_interval` seconds. `run(stop_event)` loops until the event is set.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session] | None = None,
        name: str | None = None,
        block_ms: int = 1000,
        batch_size: int = 100,
        claim_idle_ms: int = 5_000,
        max_deliveries: int = 5,
        sweep_interval: float | None = None,
    ) -> None:
        from app.db import make_engine, make_session_factory

        self.settings = settings
        self.stream = settings.events_stream
        self.name = name or consumer_name()
        self.block_ms = block_ms
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.max_deliveries = max_deliveries
        self.sweep_interval = settings.sweep_interval_seconds if sweep_interval is None else sweep_interval
        self.redis = get_redis(settings)
        self._owns_engine = session_factory is None
        self.session_factory = session_factory or make_session_factory(make_engine(settings))
        self.stats = IngesterStats()
        self._last_claim = 0.0
        self._last_sweep = 0.0
        self._celery: Any = None

    # -- Redis plumbing ------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; the group starts at the stream's start."""
        try:
            self.redis.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_new(self) -> list[tuple[str, dict[str, str]]]:
        answer: Any = self.redis.xreadgroup(
            CONSUMER_GROUP, self.name, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
        )
        return list(answer[0][1]) if answer else []

    def _claim_idle(self) -> list[tuple[str, dict[str, str]]]:
        """Entries delivered to some consumer (maybe a dead one) and not acked for `claim_idle_ms`."""
        claimed: list[tuple[str, dict[str, str]]] = []
        start = "0-0"
        while True:
            answer = self.redis.xautoclaim(
                self.stream, CONSUMER_GROUP, self.name, self.claim_idle_ms, start_id=start,
                count=self.batch_size,
            )
            start, entries = answer[0], answer[1]
            # Entries deleted from the stream while pending come back as None (Redis 6.2) or are listed
            # apart (Redis 7); either way there is nothing to store.
            claimed.extend(entry for entry in entries if entry and entry[1] is not None)
            if start in ("0-0", b"0-0") or len(claimed) >= self.batch_size:
                return claimed

    def _delivery_count(self, entry_id: str) -> int:
        pending = self.redis.xpending_range(self.stream, CONSUMER_GROUP, min=entry_id, max=entry_id, count=1)
        return int(pending[0]["times_delivered"]) if pending else 0

    def oldest_pending_age(self) -> float:
        """Seconds since the oldest entry still pending in the group was delivered (0 when none)."""
        pending = self.redis.xpending_range(self.stream, CONSUMER_GROUP, min="-", max="+", count=1)
        if not pending:
            return 0.0
        entry_ms = int(str(pending[0]["message_id"]).split("-")[0])
        return max(0.0, time.time() - entry_ms / 1000)

    # -- Handling entries ----------------------------------------------------------------------------

    def _ack(self, entry_id: str) -> None:
        self.redis.xack(self.stream, CONSUMER_GROUP, entry_id)

    def _malformed(self, entry_id: str, reason: object) -> None:
        logger.error("malformed event %s on %s: %s", entry_id, self.stream, reason)
        self.stats.malformed += 1
        EVENTS_INGESTED.labels(type="unknown", outcome="malformed").inc()
        self.redis.incr(f"{self.stream}:malformed")
        self._ack(entry_id)

    def _dead_letter(self, entry_id: str, raw: str, event: JobEvent) -> None:
        logger.error("event %s was refused %s times; moving it to %s", entry_id, self.max_deliveries,
                     dead_letter_stream(self.settings))
        self.redis.xadd(dead_letter_stream(self.settings), {"data": raw, "entry_id": entry_id}, maxlen=10_000)
        self._ack(entry_id)
        self.stats.dead_lettered += 1
        EVENTS_INGESTED.labels(type=event.type, outcome="dead_lettered").inc()

    def handle(self, entries: list[tuple[str, dict[str, str]]], *, claimed: bool = False) -> int:
        """Store `entries` and ack them; returns how many were acked.

        A malformed entry is logged, counted and acked (retrying cannot fix it). An entry the database
        refuses stays pending and is claimed again after `claim_idle_ms`; past `max_deliveries` it moves
        to the dead-letter stream `{stream}:dead`. When the database is unreachable, DatabaseUnavailable
        is raised and every entry not yet stored stays pending.
        """
        acked = 0
        for entry_id, fields in entries:
            clear_log_context()
            raw = fields.get("data")
            if raw is None:
                self._malformed(entry_id, "the entry has no `data` field")
                acked += 1
                continue
            try:
                event = parse_event(raw)
            except ValidationError as exc:
                self._malformed(entry_id, exc)
                acked += 1
                continue
            bind_log_context(search_id=event.job_id, attempt=event.attempt)
            try:
                outcome = self._store(event, entry_id)
            except SQLAlchemyError as exc:
                if _is_unavailable(exc):
                    raise DatabaseUnavailable(str(exc.__class__.__name__)) from exc
                logger.exception("the database refused event %s (%s); it stays pending", entry_id, event.type)
                EVENTS_INGESTED.labels(type=event.type, outcome="error").inc()
                if claimed and self._delivery_count(entry_id) > self.max_deliveries:
                    self._dead_letter(entry_id, raw, event)
                    acked += 1
                continue
            self._ack(entry_id)
            acked += 1
            EVENTS_INGESTED.labels(type=event.type, outcome=outcome).inc()
            counter = {"stored": "stored", "duplicate": "duplicates", "stale": "stale", "fenced": "fenced",
                       "orphan": "orphans"}[outcome]
            setattr(self.stats, counter, getattr(self.stats, counter) + 1)
            if outcome == "stored":
                observe_stored(event)
                announce_change(self.redis, self.settings, event.job_id)
                if event.type == "status" and event.status in TERMINAL:
                    self._advance_study_of(KINDS[event.kind], event.job_id)
            elif outcome == "orphan":
                logger.warning("event %s for unknown %s %s dropped", entry_id, event.kind, event.job_id)
            elif outcome == "fenced":
                logger.warning("event %s of search %s from a superseded attempt %s discarded",
                               entry_id, event.job_id, event.attempt)
        clear_log_context()
        return acked

    def _store(self, event: JobEvent, entry_id: str, attempts: int = 5) -> str:
        """`apply_event` in its own transaction, retried a few times on a busy database.

        SQLite answers "database is locked" at once when a read transaction must become a write one
        after another connection wrote; retrying right away beats waiting for XAUTOCLAIM.
        """
        for attempt in range(1, attempts + 1):
            try:
                with self.session_factory() as session, session.begin():
                    return apply_event(session, event, entry_id)
            except OperationalError:
                if attempt == attempts:
                    raise
                time.sleep(0.05 * attempt)
        raise AssertionError("unreachable")

    # -- Studies ------------------------------------------------------------------------------------

    def _study_deps(self) -> StudyDeps:
        if self._celery is None:
            self._celery = create_celery_app(self.settings)
        return StudyDeps(settings=self.settings, celery=self._celery, redis_client=self.redis)

    def _advance_study_of(self, kind: JobKind, job_id: str) -> None:
        """Move the study of a child that has just ended on at once (the sweep would, a little later).

        Best effort: the event is stored already, and a failure here is the next sweep's to repair.
        """
        try:
            with self.session_factory() as session:
                child = session.get(kind.model, job_id)
                if child is not None and child.study_id is not None:
                    advance_study(session, child.study_id, self._study_deps())
        except Exception:
            logger.exception("could not advance the study of %s; the next sweep will", job_id)

    # -- The lifecycle's sweeps ----------------------------------------------------------------------

    def _enqueue(self, kind: JobKind, job_id: str) -> str:
        if self._celery is None:
            self._celery = create_celery_app(self.settings)
        return enqueue_task(self._celery, kind.task, job_id, self.settings)

    def sweep(self) -> None:
        """Hand back jobs whose lease expired, re-send tasks the broker lost, forget dead consumers."""
        for kind in KINDS.values():
            self._sweep_kind(kind)
        # Studies move on from SQL alone: whatever a dead process left undone is done here.
        advance_unfinished(self.session_factory, self._study_deps())
        self._forget_idle_consumers()

    def _sweep_kind(self, kind: JobKind) -> None:
        def enqueue(job_id: str) -> str:
            return self._enqueue(kind, job_id)

        result = sweep.requeue_expired(
            self.session_factory,
            enqueue=enqueue,
            cancel_flag_raised=lambda job_id: bool(
                self.redis.exists(cancel_key(self.settings.redis_prefix, job_id))
            ),
            kind=kind,
        )
        self.stats.requeued_searches += len(result.requeued)
        for job_id in [*result.requeued, *result.cancelled]:
            announce_change(self.redis, self.settings, job_id)
        lost = sweep.reconcile_queue(
            self.session_factory,
            queued_ids=lambda: queued_search_ids(self.redis, self.settings, kind.task),
            enqueue=enqueue,
            kind=kind,
        )
        self.stats.reconciled_searches += len(lost)

    def _forget_idle_consumers(self, idle_ms: int = 3_600_000) -> None:
        """Remove consumers of past processes (no pending entries, idle an hour) from the group."""
        for consumer in self.redis.xinfo_consumers(self.stream, CONSUMER_GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > idle_ms and consumer["name"] != self.name:
                self.redis.xgroup_delconsumer(self.stream, CONSUMER_GROUP, consumer["name"])

    # -- Rounds --------------------------------------------------------------------------------------

    def run_once(self) -> int:
        """One round: claim idle entries, read new ones, store and ack them; sweep once caught up."""
        handled = 0
        now = time.monotonic()
        if now - self._last_claim >= self.claim_idle_ms / 2000:
            self._last_claim = now
            claimed = self._claim_idle()
            if claimed:
                self.stats.claimed += len(claimed)
                logger.info("claimed %d idle event(s) from other consumers", len(claimed))
                handled += self.handle(claimed, claimed=True)
        entries = self._read_new()
        handled += self.handle(entries)
        # Sweep only once caught up, so the end of a search still in the backlog is stored first.
        if len(entries) < self.batch_size and now - self._last_sweep >= self.sweep_interval:
            self._last_sweep = now
            self.sweep()
        self.stats.last_round_at = time.monotonic()
        return handled

    def _recover(self) -> None:
        """After a failed round: make sure the group exists again (the stream may have been deleted)."""
        try:
            self.ensure_group()
        except redis.RedisError as exc:
            logger.warning("ingester: cannot recreate the consumer group yet: %s", exc)
        if self.stats.errors and self.stats.errors % 10 == 0:
            try:
                with self.session_factory() as session:
                    session.execute(text("SELECT 1"))
            except SQLAlchemyError:
                logger.warning("ingester: the database is still unreachable")

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop until `stop` is set. No error ends the loop: each is logged, then retried with backoff."""
        stop = stop or threading.Event()
        logger.info("ingester %s consuming %s", self.name, self.stream)
        backoff = 0.2
        self._recover()
        while not stop.is_set():
            try:
                self.run_once()
                backoff = 0.2
            except Exception as exc:  # supervised: nothing stops the ingester but `stop`
                self.stats.errors += 1
                level = logging.WARNING if isinstance(exc, (redis.RedisError, DatabaseUnavailable,
                                                            SQLAlchemyError, OSError)) else logging.ERROR
                logger.log(level, "ingester round failed (%s: %s); retrying in %.1f s",
                           type(exc).__name__, exc, backoff, exc_info=level == logging.ERROR)
                stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                self._recover()

    def close(self) -> None:
        self.redis.close()
        if self._owns_engine:
            self.session_factory.kw["bind"].dispose()


@dataclass
class IngesterHandle:
    """A running in-process ingester (see `start_ingester`)."""

    ingester: Ingester
    thread: threading.Thread
    stop_event: threading.Event

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the loop to stop and wait for it (at most `timeout` seconds, one XREADGROUP block)."""
        self.stop_event.set()
        self.thread.join(timeout)
        if self.thread.is_alive():
            logger.warning("ingester thread did not stop within %s s", timeout)
        else:
            self.ingester.close()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def health(self) -> dict[str, Any]:
        """What /readyz reports: alive, seconds since the last completed round, errors so far."""
        return {
            "alive": self.alive,
            "last_round_seconds_ago": round(time.monotonic() - self.ingester.stats.last_round_at, 3),
            "errors": self.ingester.stats.errors,
        }


def start_ingester(settings: Settings, **options: Any) -> IngesterHandle:
    """Run an `Ingester` in a daemon thread of this process (the API's lifespan uses this)."""
    ingester = Ingester(settings, **options)
    stop_event = threading.Event()
    thread = threading.Thread(target=_logged(ingester.run, stop_event), name="darts-ingester", daemon=True)
    thread.start()
    return IngesterHandle(ingester=ingester, thread=thread, stop_event=stop_event)


def _logged(run: Callable[[threading.Event], None], stop_event: threading.Event) -> Callable[[], None]:
    def target() -> None:
        try:
            run(stop_event)
        except BaseException:
            logger.exception("the event ingester thread ended on an unexpected error")
            raise

    return target


def drain_events(settings: Settings, *, max_seconds: float = 10.0) -> int:
    """Store whatever events are waiting in the stream now, then return how many were handled.

    `darts-service up` calls it after its worker stopped, so the worker's last events reach SQL
    before the embedded Redis goes down.
    """
    ingester = Ingester(settings, block_ms=100, sweep_interval=float("inf"))
    handled = 0
    deadline = time.monotonic() + max_seconds
    try:
        ingester.ensure_group()
        while time.monotonic() < deadline:
            count = ingester.run_once()
            handled += count
            if count == 0:
                break
    finally:
        ingester.close()
    return handled


def replay_dead_letters(settings: Settings) -> int:
    """Move every dead-lettered entry back onto the events stream (`darts-service events replay`).

    Applying an event is idempotent, so replaying one that was stored meanwhile changes nothing.
    Returns how many entries were moved.
    """
    client = get_redis(settings)
    dead = dead_letter_stream(settings)
    moved = 0
    try:
        entries: Any = client.xrange(dead)
        for entry_id, fields in entries:
            data = fields.get("data")
            if data is not None:
                client.xadd(settings.events_stream, {"data": data})
            client.xdel(dead, entry_id)
            moved += 1
    finally:
        client.close()
    return moved


def run_ingester_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run an ingester in the calling thread until `stop` is set (`darts-service ingest`)."""
    ingester = Ingester(settings)
    try:
        ingester.run(stop)
    finally:
        ingester.close()
