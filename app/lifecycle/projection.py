"""The projection of worker events onto SQL rows: the only place events change a job (a search or a
training; the event's `kind` says which).

Idempotent: applying an event twice stores it once (epochs are unique per job, status changes
follow the transition table, which has no way back from a terminal status). Fenced: an event whose
`attempt` is not the job's current attempt comes from a run that lost its lease, and changes
nothing.
"""

from __future__ import annotations

from typing import Any, Literal

from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db import utcnow
from app.events.schema import TRAINING_EPOCH_METRICS, EpochEvent, JobEvent, StatusEvent, TrainingEpochEvent
from app.lifecycle.kinds import KINDS, JobKind
from app.lifecycle.status import TERMINAL, Status, can_transition
from app.models import LifecycleColumns, Search, Training

#: What applying one event did.
Outcome = Literal["stored", "duplicate", "stale", "fenced", "orphan"]


def _insert_ignore(session: Session, kind: JobKind):  # type: ignore[no-untyped-def]
    """`INSERT ... ON CONFLICT DO NOTHING` into the kind's epoch table for the session's dialect."""
    dialect = session.get_bind().dialect.name
    unique = [kind.epoch_fk, "epoch"]
    if dialect == "postgresql":
        return postgresql.insert(kind.epoch_model).on_conflict_do_nothing(index_elements=unique)
    if dialect == "sqlite":
        return sqlite.insert(kind.epoch_model).on_conflict_do_nothing(index_elements=unique)
    raise RuntimeError(f"the ingester supports PostgreSQL and SQLite, not {dialect}")


def _insert_epoch(
    session: Session, job: LifecycleColumns, kind: JobKind, record: dict[str, Any], stream_id: str | None
) -> bool:
    """Store one epoch record of `job` once; False when it was stored already."""
    values = {**record, kind.epoch_fk: job.id, "stream_id": stream_id, "created_at": utcnow()}
    # RETURNING says whether the row went in (rowcount is not reliable for ON CONFLICT everywhere).
    statement = _insert_ignore(session, kind).values(**values).returning(kind.epoch_model.id)
    if session.execute(statement).first() is None:
        return False
    session.expire(job, ["epoch_records"])
    return True


def _mark_running(job: LifecycleColumns, emitted_at: Any) -> None:
    # An epoch proves the job runs, even when its `running` event is late (claimed from a dead
    # consumer).
    if job.status == Status.queued:
        job.status = Status.running
    if job.started_at is None:
        job.started_at = emitted_at


def _apply_training_epoch(
    session: Session, training: Training, event: TrainingEpochEvent, stream_id: str | None
) -> Outcome:
    if not _insert_epoch(session, training, KINDS["training"], event.record(), stream_id):
        return "duplicate"
    if event.epoch >= (training.epoch or 0):
        training.epoch = event.epoch
        training.metrics = event.model_dump(include=set(TRAINING_EPOCH_METRICS))
    _mark_running(training, event.emitted_at)
    return "stored"


def _apply_epoch(session: Session, search: Search, event: EpochEvent, stream_id: str | None) -> Outcome:
    if not _insert_epoch(session, search, KINDS["search"], event.record(), stream_id):
        return "duplicate"
    if event.epoch >= (search.epoch or 0):
        search.epoch = event.epoch
        search.metrics = event.metrics()
        search.genotype = event.genotype
    if search.best_valid_acc is None or event.valid_acc > search.best_valid_acc:
        search.best_valid_acc = event.valid_acc
    _mark_running(search, event.emitted_at)
    return "stored"


def _apply_status(search: LifecycleColumns, event: StatusEvent) -> Outcome:
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
    if target == Status.succeeded and isinstance(search, Training) and event.outcome is not None:
        search.test_accuracy = event.outcome.test_accuracy
        search.test_loss = event.outcome.test_loss
        search.valid_accuracy = event.outcome.valid_accuracy
        search.parameters = event.outcome.parameters
        search.multiply_adds = event.outcome.multiply_adds
    if target == Status.succeeded and isinstance(search, Search) and event.stop_reason is not None:
        search.stop_reason = event.stop_reason
        if event.genotype is not None:  # the genotype the early-stop rule keeps
            search.genotype = event.genotype
    return "stored"


def apply_event(session: Session, event: JobEvent, stream_id: str | None) -> Outcome:
    """Write `event` into SQL (the caller commits) and say what happened:

    `stored`; `duplicate` (already applied); `stale` (a status change that no longer applies);
    `fenced` (sent by an attempt that no longer holds the search); `orphan` (the search is gone).
    """
    # Row lock on PostgreSQL so concurrent ingesters update one search in turn (SQLite writes are
    # serialised by the database itself).
    model = KINDS[event.kind].model
    query = select(model).where(model.id == event.job_id).with_for_update()
    job = session.execute(query).scalar_one_or_none()
    if job is None:
        return "orphan"
    if event.attempt is not None and event.attempt != job.attempts:
        return "fenced"
    if isinstance(event, EpochEvent):
        return _apply_epoch(session, job, event, stream_id)
    if isinstance(event, TrainingEpochEvent):
        return _apply_training_epoch(session, job, event, stream_id)
    return _apply_status(job, event)
