"""What a worker does with a task it received: run the job (search or training), or why not."""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy.orm import Session

from app.lifecycle.kinds import SEARCH, JobKind
from app.lifecycle.lease import database_now, lease_held
from app.lifecycle.status import TERMINAL, Status


class StartDecision(StrEnum):
    run = "run"  # take the lease and run it
    missing = "missing"  # deleted: nothing to do
    finished = "finished"  # already terminal: a duplicate task
    cancel = "cancel"  # cancelled before any worker started it: report `cancelled`
    duplicate = "duplicate"  # another worker holds the lease: this copy does nothing
    exhausted = "exhausted"  # every attempt was used by workers that died: report `failed`


def decide_start(
    session: Session, job_id: str, *, max_attempts: int, cancel_flag: bool, kind: JobKind = SEARCH
) -> StartDecision:
    """Decide from the row (and the Redis cancel flag the caller read) what a worker should do."""
    model = kind.model
    search = session.get(model, job_id)
    if search is None:
        return StartDecision.missing
    if search.status in TERMINAL:
        return StartDecision.finished
    if search.status == Status.cancelling or search.cancel_requested or cancel_flag:
        return StartDecision.cancel
    now = database_now(session)
    if session.query(model.id).filter(model.id == job_id, lease_held(now, kind)).first() is not None:
        return StartDecision.duplicate
    if search.attempts >= max_attempts:
        return StartDecision.exhausted
    return StartDecision.run


def exhausted_message(attempts: int, max_attempts: int) -> str:
    return (
        f"gave up after {attempts} attempts: the worker running it stopped unexpectedly each time "
        f"(SEARCH_MAX_ATTEMPTS={max_attempts})"
    )
