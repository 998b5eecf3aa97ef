"""Searches: create (and enqueue), list, read, genotype, epochs, cancel, delete.

Status changes are the lifecycle's (`app.lifecycle`): this module calls it and decides none itself.
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
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.db import utcnow
from app.lifecycle import cancel as lifecycle_cancel
from app.lifecycle.status import TERMINAL, Status
from app.models import Dataset, Search, SearchEpoch
from app.queue import enqueue_search
from app.schemas import SearchSpec, UploadedDatasetSpec, default_search_name
from app.services import admission
from app.services.errors import Conflict, NotFound, ServiceUnavailable, TooManyRequests, Unprocessable
from app.services.pagination import encode_cursor, older_than
from app.settings import Settings
from app.storage import search_dir

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# When an owner at MAX_ACTIVE_SEARCHES_PER_OWNER is told to try again.
QUOTA_RETRY_AFTER_SECONDS = 30


def dataset_ref(spec: SearchSpec) -> str:
    """What the worker loads: `upload:<dataset id>` or `builtin:<name>` (name "digits", "synthetic")."""
    if isinstance(spec.dataset, UploadedDatasetSpec):
        return f"upload:{spec.dataset.id}"
    return f"builtin:{spec.dataset.name}"


def _count_active(session: Session, owner: str) -> int:
    """The owner's searches that have not finished (queued, running, cancelling)."""
    query = select(func.count()).where(Search.owner == owner, Search.status.not_in(TERMINAL))
    return session.scalar(query) or 0


def _quota_exceeded(settings: Settings) -> TooManyRequests:
    limit = settings.max_active_searches_per_owner
    return TooManyRequests(
        f"you have {limit} searches queued or running, the most allowed (MAX_ACTIVE_SEARCHES_PER_OWNER): "
        "wait for one to finish or cancel one",
        retry_after=QUOTA_RETRY_AFTER_SECONDS,
    )


def _require_time_limit_within(spec: SearchSpec, settings: Settings) -> None:
    """A spec may lower the service's SEARCH_TIME_LIMIT, never raise it (422 naming the field)."""
    limit, asked = settings.search_time_limit, spec.resources.time_limit_seconds
    if limit is not None and asked is not None and asked > limit:
        raise Unprocessable(
            f"resources.time_limit_seconds ({asked}) exceeds this service's limit of {limit} s "
            "(SEARCH_TIME_LIMIT): ask for at most that",
            loc=("body", "resources", "time_limit_seconds"),
            error_type="time_limit_too_long",
        )


def create_search(
    session: Session, spec: SearchSpec, *, celery: Celery, settings: Settings, owner: str
) -> Search:
    """Insert a `queued` search owned by `owner` and send its task to the broker.

    TooManyRequests (429) when the owner has `max_active_searches_per_owner` active searches already: it
    is counted before the insert and again after it (two requests at once may both be refused, never
    both accepted over the limit). An uploaded dataset must be the owner's own (422 otherwise).

    The row is committed before the task is sent, so a worker that picks the task up at once finds it.
    When the broker cannot be reached the row is deleted again and ServiceUnavailable (503) raised:
    nothing accepted is left behind that no worker will ever run.
    """
    if isinstance(spec.dataset, UploadedDatasetSpec):
        dataset = session.get(Dataset, spec.dataset.id)
        if dataset is None or dataset.owner != owner:
            raise Unprocessable(
                f"unknown dataset id {spec.dataset.id!r}: upload it with POST /datasets first",
                loc=("body", "dataset", "id"),
                error_type="unknown_dataset",
            )
        if spec.name is None:
            spec = spec.model_copy(update={"name": default_search_name(dataset.name)})
    _require_time_limit_within(spec, settings)
    spec_json = spec.model_dump(mode="json")
    admission.require_fits(session, spec, settings, owner=owner)
    if _count_active(session, owner) >= settings.max_active_searches_per_owner:
        raise _quota_exceeded(settings)
    search = Search(
        id=str(uuid.uuid4()),
        name=spec.name,
        owner=owner,
        status=Status.queued,
        spec=spec_json,
        dataset_ref=dataset_ref(spec),
        created_at=utcnow(),
        epoch=0,
        epochs=spec.training.epochs,
    )
    session.add(search)
    session.commit()
    if _count_active(session, owner) > settings.max_active_searches_per_owner:
        session.execute(delete(Search).where(Search.id == search.id))
        session.commit()
        raise _quota_exceeded(settings)
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


def create_study_search(
    session: Session,
    spec: SearchSpec,
    *,
    celery: Celery,
    settings: Settings,
    owner: str,
    study_id: str,
    stage: str,
    seed: int,
) -> Search | None:
    """Insert and enqueue the search of `study_id`'s `stage` for `seed`; None when it exists already.

    The study's orchestrator calls it; the study's request passed admission and the quota when it was
    accepted, so neither is checked again. The unique (study, stage, seed) makes it idempotent: when
    two orchestrators create the same child at once, one insert wins. When the broker cannot be reached
    the row stays `queued` and the reconciler (`app.lifecycle.sweep.reconcile_queue`) sends it later.
    """
    search = Search(
        id=str(uuid.uuid4()),
        name=spec.name,
        owner=owner,
        status=Status.queued,
        spec=spec.model_dump(mode="json"),
        dataset_ref=dataset_ref(spec),
        created_at=utcnow(),
        epoch=0,
        epochs=spec.training.epochs,
        study_id=study_id,
        study_stage=stage,
        study_seed=seed,
    )
    session.add(search)
    try:
        session.commit()
    except IntegrityError:  # another orchestrator created it first (or the study is gone)
        session.rollback()
        return None
    try:
        task_id = enqueue_search(celery, search.id, settings)
    except (BrokerError, redis.RedisError, OSError) as exc:
        logger.warning(
            "could not enqueue search %s of study %s (the reconciler will): %s", search.id, study_id, exc
        )
        return search
    session.execute(update(Search).where(Search.id == search.id).values(celery_task_id=task_id))
    session.commit()
    search.celery_task_id = task_id
    return search


def list_searches(
    session: Session,
    *,
    status: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    owner: str | None = None,
) -> tuple[list[Search], str | None]:
    """Newest first (only `owner`'s when given); returns one page and the cursor of the next (None on the
    last page)."""
    query = select(Search).order_by(Search.created_at.desc(), Search.id.desc()).limit(limit + 1)
    if owner is not None:
        query = query.where(Search.owner == owner)
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


def raise_cancel_flag(redis_client: redis.Redis, settings: Settings, search_id: str) -> None:
    """Raise the Redis flag a running worker polls between batches (`{prefix}:cancel:{id}`, every 0.5 s).

    Best effort: the worker also reads the row's `cancel_requested` (every 2 s), so a cancel still
    reaches it, a little later, while Redis is unreachable.
    """
    try:
        expiry = timedelta(seconds=settings.broker_visibility_timeout)
        redis_client.set(lifecycle_cancel.cancel_key(settings.redis_prefix, search_id), "1", ex=expiry)
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
    """Cancel a search (idempotent; see `app.lifecycle.cancel.cancel`). Finished: Conflict (409).

    `revoke(celery_task_id)` is called for a search cancelled while queued (the route runs
    `revoke_task` after the response: a broadcast to an unreachable broker takes seconds to give up).
    """
    search = get_search(session, search_id)
    try:
        return lifecycle_cancel.cancel(
            session,
            search,
            revoke=revoke,
            raise_flag=lambda target: raise_cancel_flag(redis_client, settings, target),
        )
    except lifecycle_cancel.AlreadyFinished as finished:
        raise Conflict(
            f"search {search_id!r} already finished with status {finished.status!r}; it cannot be cancelled"
        ) from None


def delete_search(session: Session, search_id: str, *, settings: Settings) -> None:
    """Remove a finished search, its epochs and its artifacts; Conflict (409) while it may still run."""
    search = get_search(session, search_id)
    if search.status not in TERMINAL:
        raise Conflict(
            f"search {search_id!r} is {search.status}: cancel it and wait until it has finished to delete it"
        )
    session.execute(delete(SearchEpoch).where(SearchEpoch.search_id == search_id))
    session.execute(delete(Search).where(Search.id == search_id))
    session.commit()
    shutil.rmtree(search_dir(settings, search_id), ignore_errors=True)


def count_by_status(session: Session) -> dict[str, int]:
    counts = {str(status): 0 for status in Status}
    for status, count in session.execute(select(Search.status, func.count()).group_by(Search.status)):
        counts[str(status)] = int(count)
    return counts
