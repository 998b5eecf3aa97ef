"""The Celery task `darts.run_search(search_id)`: lease the search, run it, publish its events.

A worker runs one search at a time (`--pool=solo`, `--concurrency=1`, prefetch 1, `acks_late`). The
task body imports torch and darts_core itself, so the worker's parent never touches CUDA before the
task runs (and with the solo pool there is no fork at all).

What the worker writes where:

- Redis Stream `{REDIS_PREFIX}:events` (`app.events`): the `running` status when it starts, one event
  per finished epoch, and `succeeded` / `failed` / `cancelled` at the end. The ingester turns them
  into SQL; the worker never writes a search's status or metrics itself.
- SQL `searches.lease_owner`, `lease_expires_at`, `attempts`: the lease, the only columns it owns.

The lease: an atomic `UPDATE ... WHERE lease is free or expired` makes this worker the search's only
runner; a heartbeat thread renews it every `SEARCH_LEASE_SECONDS / 3`. A second copy of the task (the
Redis transport redelivers unacknowledged tasks after the visibility timeout, even while they run)
finds a live lease and returns without running anything. Acking that copy loses nothing: if the
lease holder dies, its lease expires and the ingester's sweep (`requeue_expired_searches`) puts the
search back in the queue, where a worker resumes it from its last checkpoint. `attempts` counts
leases taken; past `SEARCH_MAX_ATTEMPTS` the search fails instead of crashing workers forever.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import redis
from celery import Celery, shared_task
from celery.exceptions import Reject
from celery.signals import worker_shutting_down
from sqlalchemy import or_, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory, utcnow
from app.events import EventStatus, cancel_key, publish_epoch, publish_status
from app.logging_config import bind_log_context
from app.models import TERMINAL_STATUSES, Dataset, Search, SearchStatus
from app.redis import get_redis
from app.settings import Settings, get_settings
from worker.celery_app import RUN_SEARCH_TASK, enqueue_search

logger = logging.getLogger(__name__)

# How often the cancel key is read while a search runs (should_stop is polled between batches).
CANCEL_POLL_SECONDS = 0.5
SQL_CANCEL_POLL_SECONDS = 2.0
# How long a failed XADD of an event is retried before the search is given up.
PUBLISH_RETRY_SECONDS = 60.0

# Set when the worker begins a warm shutdown (Ctrl-C, SIGTERM): the running search stops at its next
# batch and goes back to the queue, to resume from its checkpoint.
_worker_shutting_down = threading.Event()


@worker_shutting_down.connect
def _on_worker_shutting_down(**_: Any) -> None:
    _worker_shutting_down.set()


_session_factories: dict[str, sessionmaker[Session]] = {}
_session_factories_lock = threading.Lock()


def session_factory(settings: Settings) -> sessionmaker[Session]:
    """The worker process's sessionmaker: one engine per database URL, made on first use."""
    url = settings.sqlalchemy_url
    with _session_factories_lock:
        if url not in _session_factories:
            _session_factories[url] = make_session_factory(make_engine(settings))
        return _session_factories[url]


def lease_owner_id() -> str:
    """`hostname:pid:random`: names this run of this process in `searches.lease_owner`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


T = TypeVar("T")


def _retrying(action: Callable[[], T], what: str, deadline_seconds: float = PUBLISH_RETRY_SECONDS) -> T:
    """Run `action`, retrying on Redis connection errors for up to `deadline_seconds`."""
    deadline = time.monotonic() + deadline_seconds
    delay = 0.2
    while True:
        try:
            return action()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if time.monotonic() > deadline:
                raise
            logger.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


class Lease:
    """This worker's lease on one search row, renewed by a heartbeat thread until `stop()`.

    `lost` is set when a renewal finds the lease taken over (it expired while this worker stalled and
    the sweep handed the search to another worker): the run must then stop without reporting.
    """

    def __init__(self, settings: Settings, factory: sessionmaker[Session], search_id: str) -> None:
        self.settings = settings
        self.factory = factory
        self.search_id = search_id
        self.owner = lease_owner_id()
        self.seconds = settings.search_lease_seconds
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        """Take the lease if it is free or expired and attempts remain; counts one attempt."""
        now = utcnow()
        with self.factory() as session, session.begin():
            taken = session.execute(
                update(Search)
                .where(
                    Search.id == self.search_id,
                    Search.status.in_([SearchStatus.queued, SearchStatus.running]),
                    or_(Search.lease_owner.is_(None), Search.lease_expires_at < now),
                    Search.attempts < self.settings.search_max_attempts,
                )
                .values(
                    lease_owner=self.owner,
                    lease_expires_at=now + timedelta(seconds=self.seconds),
                    attempts=Search.attempts + 1,
                )
                .execution_options(synchronize_session=False)
            ).rowcount
        return taken == 1

    def renew(self) -> bool:
        with self.factory() as session, session.begin():
            renewed = session.execute(
                update(Search)
                .where(Search.id == self.search_id, Search.lease_owner == self.owner)
                .values(lease_expires_at=utcnow() + timedelta(seconds=self.seconds))
                .execution_options(synchronize_session=False)
            ).rowcount
        return renewed == 1

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.renew():
                    logger.error("lease on search %s was taken over; stopping this run", self.search_id)
                    self.lost.set()
                    return
            except SQLAlchemyError:
                logger.exception("could not renew the lease on search %s; retrying", self.search_id)

    def start_heartbeat(self) -> None:
        # In a copy of this context: the heartbeat's log lines carry the search id and attempt too.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._heartbeat,), name=f"lease-{self.search_id}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def release(self, *, give_back_attempt: bool = False) -> None:
        """Free the lease now (the search goes back to the queue); optionally uncount this attempt."""
        values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if give_back_attempt:
            values["attempts"] = Search.attempts - 1
        with self.factory() as session, session.begin():
            session.execute(
                update(Search)
                .where(Search.id == self.search_id, Search.lease_owner == self.owner)
                .values(**values)
                .execution_options(synchronize_session=False)
            )

    def finish(self) -> None:
        """Keep the lease one more period after the final status is published.

        The ingester records that status within moments; until it has, the row still reads `running`,
        and a duplicate task arriving in between must still find the search taken.
        """
        with self.factory() as session, session.begin():
            session.execute(
                update(Search)
                .where(Search.id == self.search_id, Search.lease_owner == self.owner)
                .values(lease_expires_at=utcnow() + timedelta(seconds=self.seconds))
                .execution_options(synchronize_session=False)
            )


class StopWatch:
    """`should_stop` for `run_search`: a cancel request, the worker's shutdown, or a lost lease.

    A cancel request is the Redis key `{prefix}:cancel:{id}` (read at most every 0.5 s) or the row's
    `cancel_requested` (read every 2 s: it also covers a search cancelled while still `queued` in SQL
    just as this worker took it, and a cancel the API could not flag in Redis).
    """

    def __init__(
        self,
        client: redis.Redis,
        settings: Settings,
        search_id: str,
        lease: Lease,
        factory: sessionmaker[Session],
    ) -> None:
        self.client = client
        self.key = cancel_key(settings, search_id)
        self.search_id = search_id
        self.lease = lease
        self.factory = factory
        self.cancelled = False
        self._next_poll = 0.0
        self._next_sql_poll = 0.0

    @property
    def shutting_down(self) -> bool:
        return _worker_shutting_down.is_set()

    def __call__(self) -> bool:
        if self.lease.lost.is_set() or self.shutting_down:
            return True
        now = time.monotonic()
        if not self.cancelled and now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_SECONDS
            try:
                self.cancelled = bool(self.client.exists(self.key))
            except redis.RedisError as exc:  # a Redis blip must not kill the search
                logger.warning("could not read the cancel flag of %s: %s", self.key, exc)
        if not self.cancelled and now >= self._next_sql_poll:
            self._next_sql_poll = now + SQL_CANCEL_POLL_SECONDS
            try:
                with self.factory() as session:
                    self.cancelled = bool(
                        session.scalar(select(Search.cancel_requested).where(Search.id == self.search_id))
                    )
            except SQLAlchemyError as exc:
                logger.warning("could not read cancel_requested of search %s: %s", self.search_id, exc)
        return self.cancelled


def resolve_dataset(settings: Settings, session: Session, search: Search) -> dict[str, Any]:
    """The `load_dataset` spec of a search: a built-in's spec as given, or an upload's `.npz` path."""
    kind, _, ref = search.dataset_ref.partition(":")
    if kind == "builtin":
        spec = dict(search.spec.get("dataset") or {"name": ref})
        spec.setdefault("name", ref)
        return spec
    if kind == "upload":
        dataset = session.get(Dataset, ref)
        if dataset is None:
            raise LookupError(f"uploaded dataset {ref} no longer exists")
        path = Path(dataset.path)
        if not path.is_absolute():
            path = settings.artifacts_path / "datasets" / path
        # The upload's split and layout options travel with it; `id` is ours, not load_dataset's.
        options = {key: value for key, value in (search.spec.get("dataset") or {}).items()
                   if key != "id" and value is not None}
        return {**options, "name": "npz", "path": str(path)}
    raise ValueError(f"unknown dataset reference {search.dataset_ref!r}")


def checkpoint_dir(settings: Settings, search_id: str) -> Path:
    """Where a search's checkpoint lives (`checkpoint.pt`); a search picked up again resumes from it."""
    return settings.artifacts_path / "searches" / search_id


def checkpointed_epochs(directory: Path) -> list[dict[str, Any]]:
    """The epoch records kept in `directory`'s checkpoint (none when there is no checkpoint)."""
    import torch

    from darts_core.search import CHECKPOINT_NAME

    path = directory / CHECKPOINT_NAME
    if not path.exists():
        return []
    state = torch.load(path, map_location="cpu", weights_only=True)
    history = state.get("history") if isinstance(state, dict) else None
    return [dict(record) for record in history or []]


class SearchRun:
    """One execution of the task for one search (see the module docstring)."""

    def __init__(self, settings: Settings, search_id: str) -> None:
        self.settings = settings
        self.search_id = search_id
        self.factory = session_factory(settings)
        self.client = get_redis(settings)

    def publish_status(self, status: EventStatus, error: str | None = None) -> None:
        _retrying(
            lambda: publish_status(self.client, self.settings, self.search_id, status, error),
            f"publishing status {status} of {self.search_id}",
        )

    def _cancel_requested(self, search: Search) -> bool:
        if search.status == SearchStatus.cancelling or search.cancel_requested:
            return True
        return bool(self.client.exists(cancel_key(self.settings, self.search_id)))

    def execute(self) -> str:
        """Run the search if this worker may; returns what happened (the task's result, for logs)."""
        with self.factory() as session:
            search = session.get(Search, self.search_id)
            if search is None:
                logger.warning("search %s does not exist (deleted?); nothing to run", self.search_id)
                return "missing"
            if search.status in TERMINAL_STATUSES:
                return f"already {search.status}"
            if self._cancel_requested(search):
                self.publish_status("cancelled")
                return "cancelled before start"
            now = utcnow()
            if search.lease_owner and search.lease_expires_at and search.lease_expires_at > now:
                logger.info(
                    "search %s is leased by %s; this copy does nothing", self.search_id, search.lease_owner
                )
                return "duplicate"
            if search.attempts >= self.settings.search_max_attempts:
                self.publish_status(
                    "failed",
                    f"gave up after {search.attempts} attempts: the worker running it stopped unexpectedly "
                    f"each time (SEARCH_MAX_ATTEMPTS={self.settings.search_max_attempts})",
                )
                return "attempts exhausted"
        lease = Lease(self.settings, self.factory, self.search_id)
        if not lease.acquire():
            return "duplicate"
        bind_log_context(attempt=search.attempts + 1)  # acquire() counted this attempt
        logger.info("search %s: attempt %d started", self.search_id, search.attempts + 1)
        lease.start_heartbeat()
        try:
            return self._run_leased(lease)
        finally:
            lease.stop()

    def _run_leased(self, lease: Lease) -> str:
        self.publish_status("running")
        watch = StopWatch(self.client, self.settings, self.search_id, lease, self.factory)
        try:
            # Imported here, in the task, so a worker's parent process never loads torch or CUDA.
            from darts_core.data import load_dataset
            from darts_core.search import SearchConfig, run_search

            with self.factory() as session:
                search = session.get(Search, self.search_id)
                dataset_spec = resolve_dataset(self.settings, session, search)
                spec = dict(search.spec)
            spec.pop("dataset", None)
            spec.pop("name", None)
            config = SearchConfig.from_spec(spec)
            dataset = load_dataset(dataset_spec)
            directory = checkpoint_dir(self.settings, self.search_id)
            directory.mkdir(parents=True, exist_ok=True)
            # run_search checkpoints an epoch before reporting it: a worker killed in between left an
            # epoch only in the checkpoint. Report the checkpoint's epochs again (the ingester keeps
            # each epoch once), so none is lost when the search resumes.
            for record in checkpointed_epochs(directory):
                _retrying(
                    lambda record=record: publish_epoch(self.client, self.settings, self.search_id, record),
                    f"republishing epoch {record.get('epoch')} of {self.search_id}",
                )

            def on_epoch(result: Any) -> None:
                record = result.to_dict()
                _retrying(
                    lambda: publish_epoch(self.client, self.settings, self.search_id, record),
                    f"publishing epoch {record.get('epoch')} of {self.search_id}",
                )

            result = run_search(
                dataset, config, checkpoint_dir=directory, on_epoch=on_epoch, should_stop=watch
            )
        except Exception as exc:
            if lease.lost.is_set():
                return "lease lost"
            logger.exception("search %s failed", self.search_id)
            self.publish_status("failed", f"{type(exc).__name__}: {exc}")
            lease.finish()
            return "failed"

        if lease.lost.is_set():
            return "lease lost"
        if result.stopped and watch.cancelled:
            self.publish_status("cancelled")
            lease.finish()
            return "cancelled"
        if result.stopped and watch.shutting_down:
            # Back to the queue: the next worker resumes from the checkpoint of the last finished epoch.
            # This attempt ended cleanly, so it does not count towards SEARCH_MAX_ATTEMPTS.
            self.publish_status("queued")
            lease.release(give_back_attempt=True)
            raise Reject(f"worker shutting down; search {self.search_id} requeued", requeue=True)
        self.publish_status("succeeded")
        lease.finish()
        return "succeeded"


@shared_task(
    name=RUN_SEARCH_TASK,
    acks_late=True,
    ignore_result=True,
    # The database or Redis unreachable before the search could start: try again later rather than
    # ack the task away and leave the search queued forever.
    autoretry_for=(SQLAlchemyError, redis.ConnectionError, redis.TimeoutError),
    retry_backoff=2,
    retry_backoff_max=300,
    max_retries=30,
)
def run_search_task(search_id: str) -> str:
    """Run search `search_id` (see the module docstring for the lease and the events)."""
    return SearchRun(get_settings(), search_id).execute()


def requeue_expired_searches(
    settings: Settings, factory: sessionmaker[Session], celery: Celery, client: redis.Redis
) -> int:
    """Hand back to the queue every unfinished search whose worker's lease expired (the worker died).

    Each is marked `queued` (a status event) and enqueued again; a worker resumes it from its
    checkpoint. A search whose cancel was requested is reported `cancelled` instead. Safe to run in
    several processes at once: the conditional UPDATE that frees a lease succeeds in one of them only.
    Returns how many searches were handed back.
    """
    now = utcnow()
    with factory() as session:
        expired = session.execute(
            select(Search.id, Search.status, Search.lease_owner).where(
                Search.status.in_([SearchStatus.queued, SearchStatus.running, SearchStatus.cancelling]),
                Search.lease_owner.is_not(None),
                Search.lease_expires_at < now,
            )
        ).all()
    handed_back = 0
    for search_id, status, owner in expired:
        with factory() as session, session.begin():
            freed = session.execute(
                update(Search)
                .where(Search.id == search_id, Search.lease_owner == owner, Search.lease_expires_at < now)
                .values(lease_owner=None, lease_expires_at=None)
                .execution_options(synchronize_session=False)
            ).rowcount
        if freed != 1:
            continue
        if status == SearchStatus.cancelling or client.exists(cancel_key(settings, search_id)):
            publish_status(client, settings, search_id, "cancelled")
            logger.warning("search %s: its worker (%s) died while cancelling; cancelled", search_id, owner)
            continue
        try:
            enqueue_search(celery, search_id, settings)
        except Exception:
            # Put the expired lease back, so the next sweep tries again: never leave a search unowned
            # and out of the queue.
            with factory() as session, session.begin():
                session.execute(
                    update(Search)
                    .where(Search.id == search_id, Search.lease_owner.is_(None))
                    .values(lease_owner=owner, lease_expires_at=now)
                    .execution_options(synchronize_session=False)
                )
            raise
        publish_status(client, settings, search_id, "queued")
        handed_back += 1
        logger.warning("search %s: its worker (%s) stopped renewing its lease; requeued", search_id, owner)
    return handed_back
