"""Search events: the Redis Stream that carries them, their schema, and the ingester that stores them.

Workers append one entry per finished epoch and one per status change to the stream
`{REDIS_PREFIX}:events` (XADD, one field `data` holding the event's JSON). The ingester reads the
stream through the consumer group `ingesters` and writes every event into SQL, which is the source of
truth for every GET. Writes are idempotent (an epoch is inserted at most once per `(search_id, epoch)`,
status changes only move forward), so an entry delivered twice — a claimed entry of a dead consumer,
a duplicate XADD of a retrying worker — changes nothing the second time.

Where it runs: inside the API process (a background thread started by the app's lifespan, so the
one-machine stack needs no extra process) and/or as its own process (`darts-service ingest`, for
deployments that scale the API to zero or to many replicas). Any number of consumers may run at once:
the group hands each entry to one of them, and XAUTOCLAIM moves entries a dead consumer left to a
live one.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import redis
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.event_metrics import EVENTS_INGESTED, observe_stored
from app.logging_config import bind_log_context, clear_log_context
from app.redis import get_redis
from app.settings import Settings

logger = logging.getLogger(__name__)

CONSUMER_GROUP = "ingesters"
# Stream entries beyond this many are trimmed (approximately) on XADD; the ingester keeps up long before.
STREAM_MAX_LEN = 100_000

def cancel_key(settings: Settings, search_id: str) -> str:
    """The Redis key the API sets to ask a running search to stop."""
    return f"{settings.redis_prefix}:cancel:{search_id}"


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------------------------------------------
# Event schema
# ---------------------------------------------------------------------------------------------------


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Assigned by the producer.")
    search_id: str = Field(min_length=1, max_length=36)
    emitted_at: datetime = Field(default_factory=_utcnow, description="When the producer sent it (UTC).")


# The scalar fields of an epoch record, in record order.
EPOCH_METRICS = ("epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "seconds")


class EpochEvent(_EventBase):
    """One finished epoch: the record of `darts_core.search.EpochResult.to_dict()`."""

    type: Literal["epoch"] = "epoch"
    epoch: int = Field(ge=1, description="1-based")
    train_loss: float
    train_acc: float
    valid_loss: float
    valid_acc: float
    lr: float
    seconds: float = Field(ge=0)
    genotype: dict[str, Any]
    alphas: dict[str, Any] | None = None

    def metrics(self) -> dict[str, float | int]:
        """The summary the `searches` row keeps of its last epoch: the scalar fields of the record."""
        return self.model_dump(include=EPOCH_METRICS)


EventStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


class StatusEvent(_EventBase):
    """A status change reported by a worker.

    `running` when it starts (or resumes) a search; `queued` when it hands a search back to the queue
    (worker shutdown); `succeeded`, `failed` (with `error`) or `cancelled` when it ends.
    """

    type: Literal["status"] = "status"
    status: EventStatus
    error: str | None = None


SearchEvent = Annotated[EpochEvent | StatusEvent, Field(discriminator="type")]
_event_adapter: TypeAdapter[EpochEvent | StatusEvent] = TypeAdapter(SearchEvent)


def parse_event(data: str | bytes) -> EpochEvent | StatusEvent:
    """The event in a stream entry's `data` field; raises `pydantic.ValidationError` when malformed."""
    return _event_adapter.validate_json(data)


# ---------------------------------------------------------------------------------------------------
# Producers (workers)
# ---------------------------------------------------------------------------------------------------


def publish(client: redis.Redis, settings: Settings, event: EpochEvent | StatusEvent) -> str:
    """XADD `event` to the events stream; returns the entry id."""
    entry_id = client.xadd(
        settings.events_stream,
        {"data": event.model_dump_json()},
        maxlen=STREAM_MAX_LEN,
        approximate=True,
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else entry_id


def publish_epoch(client: redis.Redis, settings: Settings, search_id: str, record: dict[str, Any]) -> str:
    """Publish one finished epoch; `record` is `EpochResult.to_dict()`. Returns the stream entry id."""
    return publish(client, settings, EpochEvent(search_id=search_id, **record))


def publish_status(
    client: redis.Redis, settings: Settings, search_id: str, status: EventStatus, error: str | None = None
) -> str:
    """Publish a status change of `search_id`. Returns the stream entry id."""
    return publish(client, settings, StatusEvent(search_id=search_id, status=status, error=error))


# ---------------------------------------------------------------------------------------------------
# Writing events into SQL
# ---------------------------------------------------------------------------------------------------


def _insert_ignore(session: Session):
    """`INSERT ... ON CONFLICT DO NOTHING` for the session's dialect (PostgreSQL or SQLite)."""
    from app.models import SearchEpoch

    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(SearchEpoch).on_conflict_do_nothing(index_elements=["search_id", "epoch"])
    if dialect == "sqlite":
        return sqlite.insert(SearchEpoch).on_conflict_do_nothing(index_elements=["search_id", "epoch"])
    raise RuntimeError(f"the ingester supports PostgreSQL and SQLite, not {dialect}")


def apply_event(session: Session, event: EpochEvent | StatusEvent, stream_id: str | None) -> str:
    """Write `event` into SQL (the caller commits). Returns the outcome: `stored`, `duplicate`,
    `stale` (a status change that no longer applies) or `orphan` (its search no longer exists).

    Idempotent: applying the same event twice stores it once.
    """
    from app.models import Search, SearchEpoch

    # Row lock on PostgreSQL so concurrent ingesters update one search in turn (SQLite writes are
    # serialised by the database itself).
    query = select(Search).where(Search.id == event.search_id).with_for_update()
    search = session.execute(query).scalar_one_or_none()
    if search is None:
        return "orphan"

    if isinstance(event, EpochEvent):
        values = {
            "search_id": event.search_id,
            "epoch": event.epoch,
            "train_loss": event.train_loss,
            "train_acc": event.train_acc,
            "valid_loss": event.valid_loss,
            "valid_acc": event.valid_acc,
            "lr": event.lr,
            "seconds": event.seconds,
            "genotype": event.genotype,
            "alphas": event.alphas,
            "stream_id": stream_id,
            "created_at": _utcnow(),
        }
        # RETURNING says whether the row went in (rowcount is not reliable for ON CONFLICT everywhere).
        inserted = session.execute(_insert_ignore(session).values(**values).returning(SearchEpoch.id)).first()
        if inserted is None:
            return "duplicate"
        session.expire(search, ["epoch_records"])
        if event.epoch >= (search.epoch or 0):
            search.epoch = event.epoch
            search.metrics = event.metrics()
            search.genotype = event.genotype
        if search.best_valid_acc is None or event.valid_acc > search.best_valid_acc:
            search.best_valid_acc = event.valid_acc
        if search.status == "queued":  # its `running` event is late (claimed from a dead consumer)
            search.status = "running"
        if search.started_at is None:
            search.started_at = event.emitted_at
        return "stored"

    current = search.status
    if current in FINAL_STATUSES:
        return "duplicate" if current == event.status else "stale"
    if event.status == "running":
        # A `cancelling` row stays so until the worker reports `cancelled`.
        if current != "cancelling":
            search.status = "running"
        search.started_at = search.started_at or event.emitted_at
        search.error = None
        return "stored"
    if event.status == "queued":
        if current == "running":
            search.status = "queued"
            return "stored"
        return "stale"
    search.status = event.status
    search.finished_at = event.emitted_at
    search.error = event.error if event.status == "failed" else None
    return "stored"


# ---------------------------------------------------------------------------------------------------
# The ingester
# ---------------------------------------------------------------------------------------------------


def consumer_name() -> str:
    """A name unique to this process and start: `hostname:pid:random`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass
class IngesterStats:
    stored: int = 0
    duplicates: int = 0
    stale: int = 0
    orphans: int = 0
    malformed: int = 0
    dead_lettered: int = 0
    claimed: int = 0
    requeued_searches: int = 0


class Ingester:
    """One consumer of the group `ingesters`: reads events and writes them into SQL.

    `run_once()` does one round (claim entries idle for `claim_idle_ms` from any consumer, then read new
    entries, blocking up to `block_ms`); `run(stop_event)` loops until the event is set. Every
    `sweep_interval` seconds it also hands back to the queue the searches whose worker lease expired
    (`worker.tasks.requeue_expired_searches`): a worker killed mid-search resumes elsewhere.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        session_factory: sessionmaker[Session] | None = None,
        name: str | None = None,
        block_ms: int = 1000,
        batch_size: int = 100,
        claim_idle_ms: int = 30_000,
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
        if sweep_interval is None:
            sweep_interval = settings.search_lease_seconds / 2
        self.sweep_interval = sweep_interval
        self.redis = get_redis(settings)
        self._owns_engine = session_factory is None
        self.session_factory = session_factory or make_session_factory(make_engine(settings))
        self.stats = IngesterStats()
        self._last_claim = 0.0
        self._last_sweep = 0.0
        self._celery = None

    # -- Redis plumbing ------------------------------------------------------------------------------

    def ensure_group(self) -> None:
        """Create the consumer group (and the stream) if missing; the group starts at the stream's start."""
        try:
            self.redis.xgroup_create(self.stream, CONSUMER_GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _read_new(self) -> list[tuple[str, dict[str, str]]]:
        try:
            answer = self.redis.xreadgroup(
                CONSUMER_GROUP, self.name, {self.stream: ">"}, count=self.batch_size, block=self.block_ms
            )
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self.ensure_group()  # the stream was deleted (FLUSHDB, a test's cleanup): start again
            return []
        return answer[0][1] if answer else []

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

    # -- Handling entries ----------------------------------------------------------------------------

    def handle(self, entries: list[tuple[str, dict[str, str]]], *, claimed: bool = False) -> int:
        """Store `entries` and ack them; returns how many were acked.

        A malformed entry is logged, counted and acked (retrying cannot fix it). An entry whose SQL
        write fails stays pending and is claimed again after `claim_idle_ms`, at most `max_deliveries`
        times before it is moved to the dead-letter stream `{stream}:dead`.
        """
        acked = 0
        for entry_id, fields in entries:
            clear_log_context()
            raw = fields.get("data")
            try:
                if raw is None:
                    raise ValueError("the entry has no `data` field")
                event = parse_event(raw)
                bind_log_context(search_id=event.search_id, attempt=getattr(event, "attempt", None))
            except (ValidationError, ValueError) as exc:
                logger.error("malformed event %s on %s: %s", entry_id, self.stream, exc)
                self.stats.malformed += 1
                EVENTS_INGESTED.labels(type="unknown", outcome="malformed").inc()
                self.redis.incr(f"{self.stream}:malformed")
                self.redis.xack(self.stream, CONSUMER_GROUP, entry_id)
                acked += 1
                continue
            if claimed and self._delivery_count(entry_id) > self.max_deliveries:
                logger.error(
                    "event %s failed %s times; moving it to %s:dead",
                    entry_id, self.max_deliveries, self.stream,
                )
                self.redis.xadd(f"{self.stream}:dead", {"data": raw, "entry_id": entry_id}, maxlen=10_000)
                self.redis.xack(self.stream, CONSUMER_GROUP, entry_id)
                self.stats.dead_lettered += 1
                EVENTS_INGESTED.labels(type=event.type, outcome="dead_lettered").inc()
                acked += 1
                continue
            try:
                outcome = self._store(event, entry_id)
            except SQLAlchemyError:
                logger.exception("could not store event %s (%s); it stays pending", entry_id, event.type)
                EVENTS_INGESTED.labels(type=event.type, outcome="error").inc()
                continue
            self.redis.xack(self.stream, CONSUMER_GROUP, entry_id)
            acked += 1
            EVENTS_INGESTED.labels(type=event.type, outcome=outcome).inc()
            if outcome == "stored":
                self.stats.stored += 1
                observe_stored(event)
            elif outcome == "duplicate":
                self.stats.duplicates += 1
            elif outcome == "stale":
                self.stats.stale += 1
            else:
                self.stats.orphans += 1
                logger.warning("event %s for unknown search %s dropped", entry_id, event.search_id)
        clear_log_context()
        return acked

    def _store(self, event: EpochEvent | StatusEvent, entry_id: str, attempts: int = 5) -> str:
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

    def _sweep(self) -> None:
        from worker.celery_app import create_celery_app
        from worker.tasks import requeue_expired_searches

        if self._celery is None:
            self._celery = create_celery_app(self.settings)
        self.stats.requeued_searches += requeue_expired_searches(
            self.settings, self.session_factory, self._celery, self.redis
        )
        self._forget_idle_consumers()

    def _forget_idle_consumers(self, idle_ms: int = 3_600_000) -> None:
        """Remove consumers of past processes (no pending entries, idle an hour) from the group."""
        for consumer in self.redis.xinfo_consumers(self.stream, CONSUMER_GROUP):
            if consumer["pending"] == 0 and consumer["idle"] > idle_ms and consumer["name"] != self.name:
                self.redis.xgroup_delconsumer(self.stream, CONSUMER_GROUP, consumer["name"])

    def run_once(self) -> int:
        """One round: claim idle entries (every `claim_idle_ms / 2`), read new ones, store and ack them."""
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
            try:
                self._sweep()
            except (SQLAlchemyError, redis.RedisError):
                logger.exception("lease sweep failed; trying again in %s s", self.sweep_interval)
        return handled

    def run(self, stop: threading.Event | None = None) -> None:
        """Loop until `stop` is set; Redis or database outages are waited out, not fatal."""
        stop = stop or threading.Event()
        self.ensure_group()
        logger.info("ingester %s consuming %s", self.name, self.stream)
        backoff = 0.5
        while not stop.is_set():
            try:
                self.run_once()
                backoff = 0.5
            except (redis.ConnectionError, redis.TimeoutError, SQLAlchemyError) as exc:
                logger.warning("ingester: %s; retrying in %.1f s", exc, backoff)
                stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
                try:
                    self.ensure_group()
                except redis.RedisError:
                    pass

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


def start_ingester(settings: Settings, **options: Any) -> IngesterHandle:
    """Run an `Ingester` in a daemon thread of this process (the API's lifespan uses this)."""
    ingester = Ingester(settings, **options)
    ingester.ensure_group()
    stop_event = threading.Event()
    target = _run_logged(ingester.run, stop_event)
    thread = threading.Thread(target=target, name="darts-ingester", daemon=True)
    thread.start()
    return IngesterHandle(ingester=ingester, thread=thread, stop_event=stop_event)


def _run_logged(run: Callable[[threading.Event], None], stop_event: threading.Event) -> Callable[[], None]:
    def target() -> None:
        try:
            run(stop_event)
        except Exception:
            logger.exception("the event ingester stopped on an unexpected error")
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


def run_ingester_forever(settings: Settings, stop: threading.Event | None = None) -> None:
    """Run an ingester in the calling thread until `stop` is set (`darts-service ingest`)."""
    ingester = Ingester(settings)
    try:
        ingester.run(stop)
    finally:
        ingester.close()

