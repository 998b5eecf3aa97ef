"""Cancelling a job (search or training): at once when no worker holds it, between two batches when one
does."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import affected_rows
from app.lifecycle.kinds import kind_of
from app.lifecycle.lease import database_now, lease_free_or_expired
from app.lifecycle.status import Status
from app.models import LifecycleColumns

JobT = TypeVar("JobT", bound=LifecycleColumns)


class AlreadyFinished(Exception):
    """The job ended (succeeded or failed) before the cancel: there is nothing to cancel."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def cancel_key(redis_prefix: str, job_id: str) -> str:
    """The Redis key that asks the run of `job_id` to stop (the worker polls it between batches); job
    ids are UUIDs, unique across kinds."""
    return f"{redis_prefix}:cancel:{job_id}"


def cancel(
    session: Session,
    search: JobT,
    *,
    revoke: Callable[[str], None],
    raise_flag: Callable[[str], None],
) -> JobT:
    """Cancel `search` (a search or a training row; idempotent); commits.

    - queued and no worker holds its lease: `cancelled` at once, and `revoke(celery_task_id)` called.
    - running, or queued but leased (a worker has just taken it): `cancelling` with `cancel_requested`
      set, and `raise_flag(search_id)` (the Redis flag the worker polls every 0.5 s; the worker also
      reads `cancel_requested` every 2 s, so a flag lost with Redis still arrives); the worker stops
      between batches and reports `cancelled`.
    - cancelling / cancelled: nothing more to do (the flag is raised again for a cancelling one).
    - succeeded / failed: AlreadyFinished.
    """
    model = kind_of(search).model
    now = database_now(session)
    queued_to_cancelled = affected_rows(
        session.execute(
            update(model)
            .where(model.id == search.id, model.status == Status.queued)
            .where(lease_free_or_expired(now, kind_of(search)))
            .values(status=Status.cancelled, cancel_requested=True, finished_at=now)
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    session.refresh(search)
    if queued_to_cancelled == 1:
        if search.celery_task_id:
            revoke(search.celery_task_id)
        return search

    # A queued row that was not cancelled above is leased: a worker runs it already.
    session.execute(
        update(model)
        .where(model.id == search.id, model.status.in_([Status.queued, Status.running]))
        .values(status=Status.cancelling, cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    session.refresh(search)
    if search.status == Status.cancelling:
        raise_flag(search.id)
        return search
    if search.status == Status.cancelled:
        return search
    raise AlreadyFinished(search.status)
