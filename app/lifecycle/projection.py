"""The projection of worker events onto SQL rows: the only place events change a search.

Idempotent: applying an event twice stores it once (epochs are unique per search, status changes
follow the transition table, which has no way back from a terminal status). Fenced: an event whose
`attempt` is not the search's current attempt comes from a run that lost its lease, and changes
nothing.
"""

from __future__ import annotations

from typing import Literal

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import utcnow
from app.events.schema import EpochEvent, StatusEvent
from app.lifecycle.status import TERMINAL, Status, can_transition
from app.models import Search, SearchEpoch

#: What applying one event did.
Outcome = Literal["stored", "duplicate", "stale", "fenced", "orphan"]


def _insert_ignore(session: Session):  # type: ignore[no-untyped-def]
    """`INSERT ... ON CONFLICT DO NOTHING` into search_epochs for the session's dialect."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(SearchEpoch).on_conflict_do_nothing(index_elements=["search_id", "epoch"])
    if dialect == "sqlite":
        return sqlite.insert(SearchEpoch).on_conflict_do_nothing(index_elements=["search_id", "epoch"])
    raise RuntimeError(f"the ingester supports PostgreSQL and SQLite, not {dialect}")


def _apply_epoch(session: Session, search: Search, event: EpochEvent, stream_id: str | None) -> Outcome:
    values = {**event.record(), "search_id": event.search_id, "stream_id": stream_id, "created_at": utcnow()}
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
    # An epoch proves the search runs, even when its `running` event is late (claimed from a dead
    # consumer).
    if search.status == Status.queued:
        search.status = Status.running
    if search.started_at is None:
        search.started_at = event.emitted_at
    return "stored"


def _apply_status(search: Search, event: StatusEvent) -> Outcome:
    current, target = Status(search.status), event.status
    if target == Status.running:
        # A resumed run reports `running` again; a `cancelling` search stays so until the worker
        # reports `cancelled`.
        search.started_at = search.started_at or event.emitted_at
        if current == target:
            return "duplicate"
        if not can_transition(current, target):
            return "stale"
        search.status = target
        search.error = None
        return "stored"
    if current == target:
        return "duplicate"
    if not can_transition(current, target):
        return "stale"
    search.status = target
    if target in TERMINAL:
        search.finished_at = event.emitted_at
        search.error = event.error if target == Status.failed else None
    return "stored"


def apply_event(session: Session, event: EpochEvent | StatusEvent, stream_id: str | None) -> Outcome:
    """Write `event` into SQL (the caller commits) and say what happened:

    `stored`; `duplicate` (already applied); `stale` (a status change that no longer applies);
    `fenced` (sent by an attempt that no longer holds the search); `orphan` (the search is gone).
    """
    # Row lock on PostgreSQL so concurrent ingesters update one search in turn (SQLite writes are
    # serialised by the database itself).
    query = select(Search).where(Search.id == event.search_id).with_for_update()
    search = session.execute(query).scalar_one_or_none()
    if search is None:
        return "orphan"
    if event.attempt is not None and event.attempt != search.attempts:
        return "fenced"
    if isinstance(event, EpochEvent):
        return _apply_epoch(session, search, event, stream_id)
    return _apply_status(search, event)
