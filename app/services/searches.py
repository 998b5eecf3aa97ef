"""Searches: create (and enqueue), list, read, genotype, epochs, cancel, delete.

Status changes made here are conditional UPDATEs (`... WHERE status = <expected>`), so a worker or the
ingester changing the same row at the same moment never has its change overwritten.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.events import cancel_key
from app.models import TERMINAL_STATUSES, Dataset, Search, SearchEpoch, SearchStatus
from app.schemas import SearchSpec, UploadedDatasetSpec
from app.services import admission
from app.services.errors import Conflict, NotFound, ServiceUnavailable, Unprocessable
from app.services.pagination import encode_cursor, older_than
from app.settings import Settings
from worker.celery_app import enqueue_search

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def artifact_dir(settings: Settings, search_id: str):
    """Where a search's checkpoints and outputs live: `ARTIFACT_DIR/searches/{id}`."""
    return settings.artifacts_path / "searches" / search_id


def dataset_ref(spec: SearchSpec) -> str:
    """What the worker loads: `upload:<dataset id>` or `builtin:<name>` (name "digits", "synthetic")."""
    if isinstance(spec.dataset, UploadedDatasetSpec):
        return f"upload:{spec.dataset.id}"
    return f"builtin:{spec.dataset.name}"


def _check_engine_accepts(spec: dict[str, Any]) -> None:
    """The worker builds `darts_core.search.SearchConfig.from_spec(spec)`: refuse here (422) what it would
    refuse there, so a bad spec never becomes a failed search. (darts_core imports torch: lazily.)"""
    from darts_core.search import SearchConfig

    try:
        SearchConfig.from_spec(spec)
    except ValueError as exc:
        raise Unprocessable(f"the search engine refuses this spec: {exc}", error_type="invalid_spec") from exc


def create_search(session: Session, spec: SearchSpec, *, celery: Celery, settings: Settings) -> Search:
    """Insert a `queued` search and send its task to the broker.

    The row is committed before the task is sent, so a worker that picks the task up at once finds it.
    When the broker cannot be reached the row is deleted again and ServiceUnavailable (503) raised:
    nothing accepted is left behind that no worker will ever run.
    """
    if isinstance(spec.dataset, UploadedDatasetSpec):
        dataset = session.get(Dataset, spec.dataset.id)
        if dataset is None:
            raise Unprocessable(
                f"unknown dataset id {spec.dataset.id!r}: upload it with POST /datasets first",
                loc=("body", "dataset", "id"),
                error_type="unknown_dataset",
            )
        if spec.name is None:
            spec = spec.model_copy(update={"name": f"{dataset.name} search"})
    spec_json = spec.model_dump(mode="json")
    _check_engine_accepts(spec_json)
    admission.require_fits(session, spec, settings)
    search = Search(
        id=str(uuid.uuid4()),
        name=spec.name,
        status=SearchStatus.queued,
        spec=spec_json,
        dataset_ref=dataset_ref(spec),
        created_at=utcnow(),
        epoch=0,
        epochs=spec.training.epochs,
    )
    session.add(search)
    session.commit()
    try:
        task_id = enqueue_search(celery, search.id, settings)
    except (BrokerError, redis.RedisError, OSError) as exc:
        logger.warning("could not enqueue search %s: %s", search.id, exc)
        session.execute(delete(Search).where(Search.id == search.id))
        session.commit()
        # The reason stays in the log: exception texts name server paths and addresses.
        raise ServiceUnavailable(
            "the task broker (Redis) is unreachable; the search was not created"
        ) from exc
    # Only this column: the worker may already have marked the row running.
    session.execute(update(Search).where(Search.id == search.id).values(celery_task_id=task_id))
    session.commit()
    search.celery_task_id = task_id
    return search


def list_searches(
    session: Session, *, status: str | None = None, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> tuple[list[Search], str | None]:
    """Newest first; returns one page and the cursor of the next (None on the last page)."""
    query = select(Search).order_by(Search.created_at.desc(), Search.id.desc()).limit(limit + 1)
    if status is not None:
        query = query.where(Search.status == status)
    if cursor is not None:
        query = query.where(older_than(Search.created_at, Search.id, cursor))
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)


def get_search(session: Session, search_id: str) -> Search:
    search = session.get(Search, search_id)
    if search is None:
        raise NotFound(f"search {search_id!r} not found")
    return search


def get_genotype(session: Session, search_id: str, epoch: int | None = None) -> dict[str, Any]:
    """The latest genotype, or the one derived after `epoch`."""
    search = get_search(session, search_id)
    if epoch is None:
        if search.genotype is None:
            raise NotFound(f"search {search_id!r} has no genotype yet: it appears after the first epoch")
        return search.genotype
    record = session.scalar(
        select(SearchEpoch).where(SearchEpoch.search_id == search_id, SearchEpoch.epoch == epoch)
    )
    if record is None:
        raise NotFound(f"search {search_id!r} has no epoch {epoch} (finished epochs: {search.epoch})")
    return record.genotype


def list_epochs(
    session: Session, search_id: str, *, after: int = 0, limit: int | None = None
) -> list[SearchEpoch]:
    """Epoch records of a search with epoch > `after`, in order."""
    get_search(session, search_id)
    query = (
        select(SearchEpoch)
        .where(SearchEpoch.search_id == search_id, SearchEpoch.epoch > after)
        .order_by(SearchEpoch.epoch)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def epoch_after_event_id(session: Session, search_id: str, last_event_id: str) -> int:
    """The epoch an SSE `Last-Event-ID` stands for: a stream entry id of one of this search's epochs,
    or an epoch number (the id of epochs that carry no stream id)."""
    if last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) <= 9:
        return int(last_event_id)
    epoch = session.scalar(
        select(SearchEpoch.epoch).where(
            SearchEpoch.search_id == search_id, SearchEpoch.stream_id == last_event_id
        )
    )
    if epoch is None:
        raise Unprocessable(
            f"Last-Event-ID {last_event_id!r} is not an event of search {search_id!r}",
            loc=("header", "last-event-id"),
        )
    return epoch


def _set_cancel_flag(redis_client: redis.Redis, settings: Settings, search_id: str) -> None:
    """Raise the Redis flag a running worker polls between batches (`{prefix}:cancel:{id}`, every 0.5 s).

    Best effort: the worker also reads the row's `cancel_requested` (every 2 s), so a cancel still
    reaches it, a little later, while Redis is unreachable.
    """
    try:
        expiry = timedelta(seconds=settings.broker_visibility_timeout)
        redis_client.set(cancel_key(settings, search_id), "1", ex=expiry)
    except (redis.RedisError, OSError) as exc:
        logger.warning("could not set the cancel flag of search %s (the SQL flag stands): %s", search_id, exc)


def revoke_task(celery: Celery, task_id: str) -> None:
    """Revoke a queued search's Celery task (never terminate it). Best effort: a worker that receives the
    task anyway finds the row cancelled and does not start it."""
    try:
        celery.control.revoke(task_id)
    except (BrokerError, redis.RedisError, OSError) as exc:
        logger.warning("could not revoke task %s: %s", task_id, exc)


def cancel_search(
    session: Session,
    search_id: str,
    *,
    revoke: Callable[[str], None],
    redis_client: redis.Redis,
    settings: Settings,
) -> Search:
    """Cancel a search (idempotent).

    - queued and no worker holds its lease: `cancelled` at once, and `revoke(celery_task_id)` called
      (the route runs `revoke_task` after the response: a broadcast to an unreachable broker takes
      seconds to give up).
    - running, or queued but leased (a worker has just taken it; its `running` event is not ingested
      yet): `cancelling`, `cancel_requested` set in SQL and the Redis flag `{prefix}:cancel:{id}`
      raised; the worker stops between batches and the status becomes `cancelled` when it says so.
    - cancelling / cancelled: nothing more to do (the flag is set again for a cancelling one).
    - succeeded / failed: Conflict (409).
    """
    search = get_search(session, search_id)
    now = utcnow()
    not_leased = or_(
        Search.lease_owner.is_(None), Search.lease_expires_at.is_(None), Search.lease_expires_at < now
    )
    queued_to_cancelled = session.execute(
        update(Search)
        .where(Search.id == search_id, Search.status == SearchStatus.queued, not_leased)
        .values(status=SearchStatus.cancelled, cancel_requested=True, finished_at=now)
    )
    session.commit()
    if queued_to_cancelled.rowcount == 1:
        session.refresh(search)
        if search.celery_task_id:
            revoke(search.celery_task_id)
        return search

    # A queued row that was not cancelled above is leased: a worker runs it already.
    running_to_cancelling = session.execute(
        update(Search)
        .where(Search.id == search_id, Search.status.in_([SearchStatus.queued, SearchStatus.running]))
        .values(status=SearchStatus.cancelling, cancel_requested=True)
    )
    session.commit()
    session.refresh(search)
    if running_to_cancelling.rowcount == 1 or search.status == SearchStatus.cancelling:
        _set_cancel_flag(redis_client, settings, search_id)
        return search
    if search.status == SearchStatus.cancelled:
        return search
    raise Conflict(
        f"search {search_id!r} already finished with status {search.status!r}; it cannot be cancelled"
    )


def delete_search(session: Session, search_id: str, *, settings: Settings) -> None:
    """Remove a finished search, its epochs and its artifacts; Conflict (409) while it may still run."""
    search = get_search(session, search_id)
    if search.status not in TERMINAL_STATUSES:
        raise Conflict(
            f"search {search_id!r} is {search.status}: cancel it and wait until it has finished to delete it"
        )
    session.execute(delete(SearchEpoch).where(SearchEpoch.search_id == search_id))
    session.execute(delete(Search).where(Search.id == search_id))
    session.commit()
    shutil.rmtree(artifact_dir(settings, search_id), ignore_errors=True)


def count_by_status(session: Session) -> dict[str, int]:
    counts = dict.fromkeys(SearchStatus, 0)
    for status, count in session.execute(select(Search.status, func.count()).group_by(Search.status)):
        counts[status] = count
    return {str(status): count for status, count in counts.items()}
