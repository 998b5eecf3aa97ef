"""Keeping every unfinished job (search or training) owned: the lease-expiry sweep and the queue
reconciler.

Both are safe to run in several processes at once (each change is one conditional UPDATE, which one
process wins), and both run inside every ingester (`app.events.ingester`).

- `requeue_expired`: a search whose worker stopped renewing its lease (it died, or lost the database)
  goes back to `queued` with its lease freed, and onto the queue again; a worker resumes it from its
  last checkpoint. A search that was being cancelled becomes `cancelled`.
- `reconcile_queue`: a `queued` search that no worker holds and whose task message is in no queue
  (the broker lost it, the enqueue failed, Redis was flushed) is enqueued again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import affected_rows
from app.lifecycle.kinds import KINDS, SEARCH, JobKind
from app.lifecycle.lease import database_now, lease_free_or_expired
from app.lifecycle.status import Status

logger = logging.getLogger(__name__)

#: A queued search younger than this is left alone by the reconciler: its task is being sent.
RECONCILE_GRACE = timedelta(seconds=10)


@dataclass
class SweepResult:
    requeued: list[str]
    cancelled: list[str]


def requeue_expired(
    factory: sessionmaker[Session],
    *,
    enqueue: Callable[[str], object],
    cancel_flag_raised: Callable[[str], bool],
    kind: JobKind = SEARCH,
) -> SweepResult:
    """Hand back every unfinished search whose lease expired (see the module docstring).

    `enqueue(search_id)` sends its task again; when that fails the search stays `queued` without a
    lease, and `reconcile_queue` sends it on a later round.
    """
    result = SweepResult(requeued=[], cancelled=[])
    model = kind.model
    with factory() as session:
        now = database_now(session)
        expired = session.execute(
            select(model.id, model.status, model.lease_owner).where(
                model.status.in_([Status.queued, Status.running, Status.cancelling]),
                model.lease_owner.is_not(None),
                model.lease_expires_at < now,
            )
        ).all()
    for search_id, status, owner in expired:
        cancelling = status == Status.cancelling or cancel_flag_raised(search_id)
        with factory() as session, session.begin():
            now = database_now(session)
            values = (
                {"status": Status.cancelled, "finished_at": now}
                if cancelling
                else {"status": Status.queued}
            )
            freed = affected_rows(session.execute(
                update(model)
                .where(model.id == search_id, model.lease_owner == owner, model.lease_expires_at < now)
                .where(model.status.in_([Status.queued, Status.running, Status.cancelling]))
                .values(lease_owner=None, lease_expires_at=None, **values)
                .execution_options(synchronize_session=False)
            ))
        if freed != 1:
            continue
        if cancelling:
            logger.warning(
                "%s %s: its worker (%s) died while cancelling; cancelled", kind.label, search_id, owner
            )
            result.cancelled.append(search_id)
            continue
        logger.warning(
            "%s %s: its worker (%s) stopped renewing its lease; requeued", kind.label, search_id, owner
        )
        result.requeued.append(search_id)
        try:
            enqueue(search_id)
        except Exception:  # the reconciler sends it later; the search is queued and unowned
            logger.exception("could not enqueue %s %s again; the reconciler will", kind.label, search_id)
    return result


def release_leases_of(factory: sessionmaker[Session], owner_prefix: str) -> int:
    """Expire now every lease, of every kind of job, whose owner starts with `owner_prefix` (a worker
    process known dead); returns how many.

    `darts-service up` calls it when its worker child exits, so the next sweep hands the jobs back at
    once instead of after a lease period.
    """
    released = 0
    with factory() as session, session.begin():
        now = database_now(session)
        for kind in KINDS.values():
            model = kind.model
            released += affected_rows(
                session.execute(
                    update(model)
                    .where(model.lease_owner.startswith(owner_prefix, autoescape=True))
                    .where(model.status.in_([Status.queued, Status.running, Status.cancelling]))
                    .values(lease_expires_at=now - timedelta(seconds=1))
                    .execution_options(synchronize_session=False)
                )
            )
    return released


def reconcile_queue(
    factory: sessionmaker[Session],
    *,
    queued_ids: Callable[[], Collection[str]],
    enqueue: Callable[[str], object],
    kind: JobKind = SEARCH,
) -> list[str]:
    """Enqueue again every `queued`, unleased search whose task message is nowhere in the broker.

    `queued_ids()` lists the search ids of every task message the broker holds (waiting or delivered
    and unacknowledged); it is read after the rows, so a task sent in between is seen.
    """
    model = kind.model
    with factory() as session:
        now = database_now(session)
        candidates = list(
            session.scalars(
                select(model.id).where(
                    model.status == Status.queued,
                    lease_free_or_expired(now, kind),
                    model.created_at < now - RECONCILE_GRACE,
                )
            )
        )
    if not candidates:
        return []
    in_broker = set(queued_ids())
    lost = [search_id for search_id in candidates if search_id not in in_broker]
    for search_id in lost:
        logger.warning(
            "%s %s is queued but its task is in no queue; enqueueing it again", kind.label, search_id
        )
        enqueue(search_id)
    return lost


def hand_back(
    factory: sessionmaker[Session], search_id: str, owner: str, token: int, kind: JobKind = SEARCH
) -> bool:
    """A worker's warm shutdown: `running` -> `queued`, lease freed, the attempt not counted.

    Done in SQL by the worker itself (not through an event), so the row is never left `running`
    without a lease. Returns False when the lease was no longer this run's.
    """
    model = kind.model
    with factory() as session, session.begin():
        changed = affected_rows(
            session.execute(
                update(model)
                .where(model.id == search_id, model.lease_owner == owner, model.attempts == token)
                .where(model.status.in_([Status.queued, Status.running]))
                .values(
                    status=Status.queued,
                    lease_owner=None,
                    lease_expires_at=None,
                    attempts=model.attempts - 1,
                )
                .execution_options(synchronize_session=False)
            )
        )
    return changed == 1
