"""Searches: create (and enqueue), list, read, genotype, epochs, cancel, delete.

Status changes are the lifecycle's (`app.lifecycle`): this module calls it and decides none itself.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.lifecycle.status import Status
from app.models import Search, SearchEpoch
from app.schemas.searches import SearchSpec, UploadedDatasetSpec, default_search_name
from app.services import admission, jobs
from app.services.errors import NotFound, Unprocessable
from app.services.pagination import encode_cursor, older_than
from app.settings import Settings
from app.storage import search_dir

logger = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def dataset_ref(spec: SearchSpec) -> str:
    """What the worker loads: `upload:<dataset id>` or `builtin:<name>` (name "digits", "synthetic")."""
    if isinstance(spec.dataset, UploadedDatasetSpec):
        return f"upload:{spec.dataset.id}"
    return f"builtin:{spec.dataset.name}"


def create_search(
    session: Session, spec: SearchSpec, *, celery: Celery, settings: Settings, owner: str
) -> Search:
    """Insert a `queued` search owned by `owner` and send its task to the broker (`jobs.submit`: the
    per-owner quota, 429; the broker unreachable, 503). An uploaded dataset must be the owner's own (422
    otherwise); the spec must fit a worker (admission control, 422) and its budget be one some genotype
    meets (422)."""
    if isinstance(spec.dataset, UploadedDatasetSpec):
        dataset = jobs.owned_upload(session, spec.dataset.id, owner)
        if spec.name is None:
            spec = spec.model_copy(update={"name": default_search_name(dataset.name)})
    jobs.require_time_limit_within(spec.resources, settings)
    spec_json = spec.model_dump(mode="json")
    admission.require_fits(session, spec, settings, owner=owner)
    admission.require_budget_feasible(session, spec, owner=owner)
    search = Search(
        id=str(uuid.uuid4()),
        name=spec.name,
        owner=owner,
        status=Status.queued,
        spec=spec_json,
        dataset_ref=dataset_ref(spec),
        class_names=jobs.class_names_of(session, dataset_ref(spec)),
        created_at=utcnow(),
        epoch=0,
        epochs=spec.training.epochs,
    )
    return jobs.submit(session, search, celery=celery, settings=settings)


def create_study_search(
    session: Session,
    spec: SearchSpec,
    *,
    celery: Celery,
    settings: Settings,
    owner: str,
    child: jobs.StudyChild,
) -> Search | None:
    """The search of a study's child `child` (`jobs.submit_study_child`: created once, no quota or
    admission check: the study passed both when it was accepted); None when it existed already."""
    search = Search(
        id=str(uuid.uuid4()),
        name=spec.name,
        owner=owner,
        status=Status.queued,
        spec=spec.model_dump(mode="json"),
        dataset_ref=dataset_ref(spec),
        class_names=jobs.class_names_of(session, dataset_ref(spec)),
        created_at=utcnow(),
        epoch=0,
        epochs=spec.training.epochs,
    )
    return jobs.submit_study_child(session, search, child, celery=celery, settings=settings)


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
    `jobs.revoke_task` after the response: a broadcast to an unreachable broker takes seconds to give up).
    """
    search = get_search(session, search_id)
    return jobs.cancel(session, search, revoke=revoke, redis_client=redis_client, settings=settings)


def delete_search(session: Session, search_id: str, *, settings: Settings) -> None:
    """Remove a finished search, its epochs and its artifacts; Conflict (409) while it may still run or
    its study has not finished."""
    jobs.require_deletable(session, get_search(session, search_id))
    session.execute(delete(SearchEpoch).where(SearchEpoch.search_id == search_id))
    session.execute(delete(Search).where(Search.id == search_id))
    session.commit()
    shutil.rmtree(search_dir(settings, search_id), ignore_errors=True)
