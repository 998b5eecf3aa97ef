"""One execution of a job's task (a search or a training): what every kind shares.

`JobRun.execute()` decides whether to run (`app.lifecycle.start`), takes the lease and keeps it
alive, then calls the kind's `run_job` with a `StopWatch` (cancel, shutdown, lost lease, time limit)
and a `report` callback for finished epochs; it ends the run the same way for every kind.

What a run writes where:

- Redis Stream `{REDIS_PREFIX}:events` (`app.events.publisher`): `running` when it starts, one event
  per finished epoch, and `succeeded` / `failed` / `cancelled` at the end, each carrying the job's kind
  and the lease's fencing token. The ingester projects them onto SQL (`app.lifecycle.projection`).
- SQL, through `app.lifecycle` only: the lease (acquire, heartbeat, finish) and, on a warm shutdown,
  the hand-back of the job to the queue.

Redis may be unreachable for any length of time: epochs the run could not publish wait in an outbox
(they are in the checkpoint's history too) and go out, in order, once Redis answers; the final status
is retried until it is sent. A run whose lease is lost stops without reporting anything.
"""

from __future__ import annotations

import errno
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory
from app.events.publisher import publish_epoch, publish_status
from app.lifecycle.cancel import cancel_key
from app.lifecycle.kinds import SEARCH, JobKind
from app.lifecycle.lease import Lease, database_now
from app.lifecycle.start import StartDecision, decide_start, exhausted_message
from app.lifecycle.status import Status
from app.lifecycle.sweep import hand_back
from app.logging_config import bind_log_context
from app.models import Dataset, LifecycleColumns
from app.redis import get_redis
from app.settings import Settings
from app.storage import dataset_path
from worker.memory_cap import is_out_of_memory

logger = logging.getLogger(__name__)

# How often the cancel key is read while a job runs (should_stop is polled between batches).
CANCEL_POLL_SECONDS = 0.5
SQL_CANCEL_POLL_SECONDS = 2.0
# Longest pause between two tries to send the final status while Redis is unreachable.
MAX_PUBLISH_BACKOFF = 5.0
# Epochs this many behind the newest one must be in SQL already; missing ones were lost on the way
# (the stream deleted, a Redis restart that lost its last second) and are published again.
INGEST_LAG_EPOCHS = 2
# How long the end of a run waits for its epochs to be stored before reporting its final status.
STORED_WAIT_SECONDS = 300.0

# Set when the worker begins a warm shutdown (Ctrl-C, SIGTERM): the running job stops at its next
# batch and goes back to the queue, to resume from its checkpoint.
worker_shutting_down = threading.Event()

_session_factories: dict[str, sessionmaker[Session]] = {}
_session_factories_lock = threading.Lock()


class HandedBack(Exception):
    """The run stopped for a warm shutdown and gave the job back to the queue."""


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """The worker process's sessionmaker: one engine per database URL, made on first use."""
    url = settings.sqlalchemy_url
    with _session_factories_lock:
        if url not in _session_factories:
            _session_factories[url] = make_session_factory(make_engine(settings))
        return _session_factories[url]


class StopWatch:
    """`should_stop` for a job's loop: a cancel request, the worker's shutdown, or a lost lease.

    A cancel request is the Redis key `{prefix}:cancel:{id}` (read at most every 0.5 s) or the row's
    `cancel_requested` (read every 2 s: it also covers a cancel the API could not flag in Redis).
    Neither Redis nor the database being unreachable stops the job.
    """

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        search_id: str,
        lease: Lease,
        factory: sessionmaker[Session],
        *,
        deadline: float | None = None,
        kind: JobKind = SEARCH,
    ) -> None:
        self.client = client
        self.key = key
        self.job_id = search_id
        self.kind = kind
        self.lease = lease
        self.factory = factory
        self.deadline = deadline  # time.monotonic() past which the job's time limit is reached
        self.cancelled = False
        self.timed_out = False
        self._next_poll = 0.0
        self._next_sql_poll = 0.0

    @property
    def shutting_down(self) -> bool:
        return worker_shutting_down.is_set()

    def __call__(self) -> bool:
        if self.lease.lost.is_set() or self.lease.overdue() or self.shutting_down:
            return True
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            self.timed_out = True
            return True
        if not self.cancelled and now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_SECONDS
            try:
                self.cancelled = bool(self.client.exists(self.key))
            except redis.RedisError as exc:
                logger.warning("could not read the cancel flag %s: %s", self.key, exc)
        if not self.cancelled and now >= self._next_sql_poll:
            self._next_sql_poll = now + SQL_CANCEL_POLL_SECONDS
            model = self.kind.model
            try:
                with self.factory() as session:
                    self.cancelled = bool(
                        session.scalar(select(model.cancel_requested).where(model.id == self.job_id))
                    )
            except SQLAlchemyError as exc:
                logger.warning(
                    "could not read cancel_requested of %s %s: %s", self.kind.label, self.job_id, exc
                )
        return self.cancelled


class UnpublishableEvent(Exception):
    """The publisher refused an event for a reason other than Redis (an invalid record, say).

    Retrying cannot help: the run fails with this error. The record is dropped from the outbox first,
    so what waits behind it can still be sent.
    """


class Outbox:
    """Events of one run, sent in order; those Redis refused wait until it answers again."""

    def __init__(self, send: Callable[[dict[str, Any]], str]) -> None:
        self._send = send
        self._waiting: deque[dict[str, Any]] = deque()

    def __len__(self) -> int:
        return len(self._waiting)

    def put(self, record: dict[str, Any]) -> None:
        """Queue `record` behind the waiting ones and send as many as Redis takes now."""
        self._waiting.append(record)
        self.flush()

    def flush(self) -> bool:
        """Send what waits, in order; True when nothing is left.

        Raises:
            UnpublishableEvent: the head record failed for a reason other than Redis (it is dropped).
        """
        while self._waiting:
            try:
                self._send(self._waiting[0])
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                logger.warning("Redis unreachable (%s); %d event(s) wait to be published", exc, len(self))
                return False
            except Exception as exc:
                record = self._waiting.popleft()
                raise UnpublishableEvent(
                    f"epoch {record.get('epoch')} could not be published: {type(exc).__name__}: {exc}"
                ) from exc
            self._waiting.popleft()
        return True


def resolve_dataset(settings: Settings, session: Session, job: LifecycleColumns) -> dict[str, Any]:
    """The `load_dataset` spec of a job: a built-in's spec as given, or an upload's `.npz` path."""
    kind, _, ref = job.dataset_ref.partition(":")
    if kind == "builtin":
        spec = dict(job.spec.get("dataset") or {"name": ref})
        spec.setdefault("name", ref)
        return spec
    if kind == "upload":
        dataset = session.get(Dataset, ref)
        if dataset is None:
            raise LookupError(f"uploaded dataset {ref} no longer exists")
        # The upload's split and layout options travel with it; `id` is ours, not load_dataset's.
        options = {key: value for key, value in (job.spec.get("dataset") or {}).items()
                   if key != "id" and value is not None}
        return {**options, "name": "npz", "path": str(dataset_path(settings, dataset.path))}
    raise ValueError(f"unknown dataset reference {job.dataset_ref!r}")


def is_gpu_out_of_memory(exc: BaseException) -> bool:
    """`torch.cuda.OutOfMemoryError`, told by class (this module never imports torch itself)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


def _device_memory() -> str:
    """The total memory of the CUDA device the worker uses, as text ("unknown" when torch cannot say)."""
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            properties = torch.cuda.get_device_properties(torch.cuda.current_device())
            return f"{int(properties.total_memory)} bytes ({properties.name})"
    except Exception:  # noqa: BLE001 - a broken device must not hide the failure being reported
        pass
    return "unknown"


def public_error(
    exc: BaseException, settings: Settings, label: str = "search", *, estimate_bytes: int | None = None
) -> str:
    """The message a failed job shows: what went wrong, without server paths or a traceback.

    `estimate_bytes`: the admission estimate of the job's peak memory, named by a GPU out-of-memory."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:  # darts_core's CheckpointDiskFull too
        return f"disk full: the worker could not write the {label}'s checkpoint"
    if is_gpu_out_of_memory(exc):
        estimate = "unknown" if estimate_bytes is None else f"{estimate_bytes} bytes"
        return (
            f"out of GPU memory: this {label} needs more than the device has (estimated peak {estimate}, "
            f"device memory {_device_memory()}); lower the batch size, channels or cells"
        )
    if is_out_of_memory(exc):
        return (
            f"out of memory: the worker could not allocate what this {label} needs "
            "(WORKER_MEMORY_BYTES); lower the batch size, channels or cells"
        )
    message = f"{type(exc).__name__}: {exc}"
    for secret in {str(settings.artifacts_path), str(settings.data_dir.resolve())}:
        message = message.replace(secret, "<data>")
    return message[:2000]


@dataclass
class JobOutcome:
    """What a kind's `run_job` returns: whether its loop stopped before the end (should_stop said so),
    how many epochs finished, and what a `succeeded` status carries (`publish_status` keywords)."""

    stopped: bool
    epochs_completed: int
    success: dict[str, Any] = field(default_factory=dict)
    #: Added to the time-limit failure's message (what of the stopped job is kept).
    kept_note: str = ""


class JobRun:
    """One execution of the task for one job; subclasses define `kind` and `run_job`."""

    kind: JobKind = SEARCH
    #: The admission estimate of the job's peak memory, set by `run_job` once it knows the data (a GPU
    #: out-of-memory names it).
    estimate_bytes: int | None = None

    def __init__(self, settings: Settings, job_id: str) -> None:
        self.settings = settings
        self.job_id = job_id
        self.factory = session_factory(settings)
        self.client = get_redis(settings)
        self.lease: Lease | None = None

    @property
    def token(self) -> int | None:
        return self.lease.token if self.lease else None

    def run_job(self, watch: StopWatch, report: Callable[[dict[str, Any]], None]) -> JobOutcome | None:
        """Run the job's loop (resuming from its checkpoint), `report`ing every finished epoch record
        (first those its checkpoint already holds); None when the job's row is gone."""
        raise NotImplementedError

    def _publish_status(self, status: Status, error: str | None = None, **extra: Any) -> None:
        """Send a status event, retrying until Redis takes it (the lease's heartbeat keeps running)."""
        delay = 0.2
        while True:
            try:
                publish_status(
                    self.client, self.settings, self.job_id, status, error, attempt=self.token,
                    kind=self.kind.name, **extra,
                )
                return
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                if self.lease is not None and self.lease.lost.is_set():
                    return
                logger.warning("publishing %s of %s failed (%s); retrying in %.1f s",
                               status, self.job_id, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, MAX_PUBLISH_BACKOFF)

    def _cancel_flag(self) -> bool:
        try:
            return bool(self.client.exists(cancel_key(self.settings.redis_prefix, self.job_id)))
        except redis.RedisError:
            return False  # the SQL flag is read as well

    def execute(self) -> str:
        """Run the job if this worker may; returns what happened (the task's result, for logs)."""
        model = self.kind.model
        with self.factory() as session:
            decision = decide_start(
                session,
                self.job_id,
                max_attempts=self.settings.search_max_attempts,
                cancel_flag=self._cancel_flag(),
                kind=self.kind,
            )
            attempts = session.scalar(select(model.attempts).where(model.id == self.job_id))
        if decision == StartDecision.cancel:
            self._publish_status(Status.cancelled)
        elif decision == StartDecision.exhausted:
            self._publish_status(
                Status.failed, exhausted_message(attempts or 0, self.settings.search_max_attempts)
            )
        if decision != StartDecision.run:
            return decision.value
        self.lease = Lease(
            self.factory,
            self.job_id,
            seconds=self.settings.search_lease_seconds,
            max_attempts=self.settings.search_max_attempts,
            kind=self.kind,
        )
        if not self.lease.acquire():
            return StartDecision.duplicate.value
        bind_log_context(attempt=self.lease.token)
        logger.info("%s %s: attempt %s started", self.kind.label, self.job_id, self.lease.token)
        self.lease.start_heartbeat()
        try:
            return self._run_leased(self.lease)
        finally:
            self.lease.stop_heartbeat()

    def _time_limit(self) -> int | None:
        """The job's wall-clock limit: SEARCH_TIME_LIMIT, or the spec's lower one."""
        model = self.kind.model
        with self.factory() as session:
            spec = session.scalar(select(model.spec).where(model.id == self.job_id)) or {}
        asked = (spec.get("resources") or {}).get("time_limit_seconds")
        limits = [limit for limit in (self.settings.search_time_limit, asked) if limit]
        return min(limits) if limits else None

    def _deadline(self) -> float | None:
        """`time.monotonic()` at which the limit is reached, counting the time earlier attempts ran
        (from the job's `started_at`, on the database's clock)."""
        limit = self._time_limit()
        if limit is None:
            return None
        model = self.kind.model
        with self.factory() as session:
            started = session.scalar(select(model.started_at).where(model.id == self.job_id))
            elapsed = (database_now(session) - started).total_seconds() if started else 0.0
        return time.monotonic() + max(0.0, limit - elapsed)

    def _run_leased(self, lease: Lease) -> str:
        self._publish_status(Status.running)
        key = cancel_key(self.settings.redis_prefix, self.job_id)
        watch = StopWatch(
            self.client, key, self.job_id, lease, self.factory, deadline=self._deadline(), kind=self.kind
        )
        outbox = Outbox(
            lambda record: publish_epoch(
                self.client, self.settings, self.job_id, record, attempt=lease.token, kind=self.kind.name
            )
        )
        # The loop checkpoints an epoch before reporting it: a run that died in between left an epoch
        # only in the checkpoint, and events of an earlier attempt are fenced off. run_job reports the
        # checkpoint's epochs again under this attempt (the projection keeps each epoch once).
        published: dict[int, dict[str, Any]] = {}

        def report(record: dict[str, Any]) -> None:
            published[record["epoch"]] = record
            outbox.put(record)
            self._republish_missing(outbox, published, before=record["epoch"] - INGEST_LAG_EPOCHS)

        try:
            outcome = self.run_job(watch, report)
        except Exception as exc:
            return self._fail(exc, outbox, lease)
        if outcome is None:
            return StartDecision.missing.value
        try:
            return self._end(outcome, watch, outbox, published, lease)
        except UnpublishableEvent as exc:
            return self._fail(exc, outbox, lease)

    def _fail(self, exc: Exception, outbox: Outbox, lease: Lease) -> str:
        """End the run `failed` with `exc`'s public message, after publishing the epochs that can be."""
        if lease.lost.is_set():
            return "lease lost"
        logger.exception("%s %s failed", self.kind.label, self.job_id, exc_info=exc)
        while True:
            try:
                self._drain(outbox, lease)
                break
            except UnpublishableEvent:
                # Each raise dropped one record, so this ends; the failure below says what went wrong.
                logger.exception("%s %s: an epoch could not be published", self.kind.label, self.job_id)
        message = public_error(exc, self.settings, self.kind.label, estimate_bytes=self.estimate_bytes)
        self._publish_status(Status.failed, message)
        lease.finish()
        return "failed"

    def _end(
        self,
        outcome: JobOutcome,
        watch: StopWatch,
        outbox: Outbox,
        published: dict[int, dict[str, Any]],
        lease: Lease,
    ) -> str:
        """Report how a run whose loop returned ended (handed back, timed out, cancelled, succeeded)."""
        if lease.lost.is_set():
            return "lease lost"
        if outcome.stopped and watch.shutting_down and not watch.cancelled:
            # Back to the queue: the next worker resumes from the checkpoint of the last finished epoch.
            # This attempt ended cleanly, so it does not count towards SEARCH_MAX_ATTEMPTS.
            hand_back(self.factory, self.job_id, lease.owner, lease.token or 0, self.kind)
            raise HandedBack(f"worker shutting down; {self.kind.label} {self.job_id} requeued")
        if not self._drain(outbox, lease) or not self._wait_stored(outbox, published, lease):
            return "lease lost"
        if outcome.stopped and watch.timed_out and not watch.cancelled:
            limit = self._time_limit()
            self._publish_status(
                Status.failed,
                f"time limit reached: the {self.kind.label} ran for its limit of {limit} s "
                f"({outcome.epochs_completed} epoch(s) finished{outcome.kept_note})",
            )
            lease.finish()
            return "time limit reached"
        if outcome.stopped and watch.cancelled:
            self._publish_status(Status.cancelled)
            lease.finish()
            return "cancelled"
        self._publish_status(Status.succeeded, **outcome.success)
        lease.finish()
        return "succeeded"

    def _stored_epochs(self) -> set[int] | None:
        """The epochs of this job in SQL (None when the database does not answer)."""
        epochs = self.kind.epoch_model
        try:
            with self.factory() as session:
                return set(
                    session.scalars(
                        select(epochs.epoch).where(getattr(epochs, self.kind.epoch_fk) == self.job_id)
                    )
                )
        except SQLAlchemyError as exc:
            logger.warning("could not read the stored epochs of %s: %s", self.job_id, exc)
            return None

    def _republish_missing(self, outbox: Outbox, published: dict[int, dict[str, Any]], before: int) -> int:
        """Publish again the epochs up to `before` that SQL still lacks; returns how many."""
        if before < 1 or len(outbox):
            return 0
        stored = self._stored_epochs()
        if stored is None:
            return 0
        missing = sorted(epoch for epoch in published if epoch <= before and epoch not in stored)
        for epoch in missing:
            logger.warning("epoch %d of %s was lost on the way; publishing it again", epoch, self.job_id)
            outbox.put(published[epoch])
        return len(missing)

    def _wait_stored(self, outbox: Outbox, published: dict[int, dict[str, Any]], lease: Lease) -> bool:
        """Before the final status: wait until every epoch is in SQL, publishing lost ones again.

        The final status must never overtake an epoch (a finished job's history is complete).
        Gives up waiting after STORED_WAIT_SECONDS (the epochs stay in the outbox and the checkpoint);
        False when the lease was lost meanwhile.
        """
        deadline = time.monotonic() + STORED_WAIT_SECONDS
        delay = 0.1
        while time.monotonic() < deadline:
            if lease.lost.is_set():
                return False
            stored = self._stored_epochs()
            if stored is not None and set(published) <= stored:
                return True
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
            if delay == 2.0:
                self._republish_missing(outbox, published, before=max(published, default=0))
                self._drain(outbox, lease)
        logger.error("%s %s: epochs %s still not stored; reporting the end anyway", self.kind.label,
                     self.job_id, sorted(set(published) - (self._stored_epochs() or set())))
        return True

    def _drain(self, outbox: Outbox, lease: Lease) -> bool:
        """Wait until every epoch is published (Redis may be away for long); False if the lease is lost."""
        delay = 0.2
        while not outbox.flush():
            if lease.lost.is_set():
                return False
            time.sleep(delay)
            delay = min(delay * 2, MAX_PUBLISH_BACKOFF)
        return True
