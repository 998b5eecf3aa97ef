"""Cancelling a search: at once when no worker holds it, between two batches when one does."""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import affected_rows
from app.lifecycle.lease import database_now, lease_free_or_expired
from app.lifecycle.status import Status
from app.models import Search


class AlreadyFinished(Exception):
    """The search ended (succeeded or failed) before the cancel: there is nothing to cancel."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def cancel_key(redis_prefix: str, search_id: str) -> str:
    """The Redis key that asks the run of `search_id` to stop (the worker polls it between batches)."""
    return f"{redis_prefix}:cancel:{search_id}"


def cancel(
    session: Session,
    search: Search,
    *,
    revoke: Callable[[str], None],
    raise_flag: Callable[[str], None],
) -> Search:
    """Cancel `search` (idempotent); commits.

    - queued and no worker holds its lease: `cancelled` at once, and `revoke(celery_task_id)` called.
    - running, or queued but leased (a worker has just taken it): `cancelling` with `cancel_requested`
      set, and `raise_flag(search_id)` (the Redis flag the worker polls every 0.5 s; the worker also
      reads `cancel_requested` every 2 s, so a flag lost with Redis still arrives); the worker stops
      between batches and reports `cancelled`.
    - cancelling / cancelled: nothing more to do (the flag is raised again for a cancelling one).
    - succeeded / failed: AlreadyFinished.
    """
    now = database_now(session)
    queued_to_cancelled = affected_rows(
        session.execute(
            update(Search)
            .where(Search.id == search.id, Search.status == Status.queued, lease_free_or_expired(now))
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
        update(Search)
        .where(Search.id == search.id, Search.status.in_([Status.queued, Status.running]))
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
