"""The lifecycle of a study: its stages, and the conditional updates that move it on.

A study has the search statuses (`app.lifecycle.status.Status`) and a stage:

| stage      | what runs                                   | next                                   |
|------------|---------------------------------------------|----------------------------------------|
| searching  | one search per seed                         | selecting, once enough searches ended  |
| selecting  | one short training per found genotype       | final (or done without a final spec)   |
| final      | the full training of the chosen genotype    | done                                   |
| done       | nothing: the study is terminal              |                                        |

Status: `queued` until a child runs, `running`, `cancelling` once cancel was asked while children
still run, then `succeeded`, `failed` or `cancelled` (terminal, never changed again).

Every change is one conditional UPDATE (from the expected stage or status), so several orchestrators
(sweeps of several processes, the ingester after a child's last event) may advance one study at once:
one of them wins each change and the others see it done. The orchestrator is
`app.services.study_advance.advance_study`.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from app.db import affected_rows
from app.lifecycle.lease import database_now
from app.lifecycle.status import TERMINAL, Status
from app.models import Study

#: Statuses of a study that has not ended.
UNFINISHED: tuple[Status, ...] = (Status.queued, Status.running, Status.cancelling)


class Stage(StrEnum):
    searching = "searching"
    selecting = "selecting"
    final = "final"
    done = "done"


class StudyFinished(Exception):
    """The study ended before the cancel: there is nothing to cancel."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def mark_running(session: Session, study_id: str) -> bool:
    """`queued` -> `running` (a child has started); commits. False when it was not queued."""
    changed = affected_rows(
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.status == Status.queued)
            .values(status=Status.running, started_at=database_now(session))
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    return changed == 1


def move_stage(session: Session, study_id: str, current: Stage, target: Stage, **values: Any) -> bool:
    """`current` -> `target` with `values` (the chosen genotype...), only while the study runs and no
    cancel was asked; commits. False when another orchestrator moved it first (or it ended)."""
    changed = affected_rows(
        session.execute(
            update(Study)
            .where(Study.id == study_id, Study.stage == current, Study.status.in_(UNFINISHED))
            .where(Study.cancel_requested.is_(False))
            .values(stage=target, **values)
            .execution_options(synchronize_session=False)
        )
    )
    session.commit()
    return changed == 1


def finish(
    session: Session, study_id: str, status: Status, *, error: str | None = None, **values: Any
) -> bool:
    """End the study with `status` (terminal) and `error`; commits. False when it had ended already.

    `cancelled` only from a study whose cancel was asked; `succeeded` and `failed` only from one that
    was not (a study cancelled while an orchestrator was failing it ends `cancelled`, at its next round).
    """
    if status not in TERMINAL:
        raise ValueError(f"status: a study ends with one of {sorted(TERMINAL)}, not {status!r}")
    query = update(Study).where(Study.id == study_id, Study.status.in_(UNFINISHED))
    if status == Status.cancelled:
        query = query.where(Study.cancel_requested.is_(True))
    else:
        query = query.where(Study.cancel_requested.is_(False))
    changed = affected_rows(
        session.execute(
            query.values(
                status=status, stage=Stage.done, error=error, finished_at=database_now(session), **values
            ).execution_options(synchronize_session=False)
        )
    )
    session.commit()
    return changed == 1


def request_cancel(session: Session, study_id: str) -> None:
    """Ask the study to stop (idempotent): `cancelling`, with `cancel_requested` set; commits.

    The orchestrator then cancels every child and ends the study `cancelled` once all have ended.
    StudyFinished when it had ended already.
    """
    session.execute(
        update(Study)
        .where(Study.id == study_id, Study.status.in_(UNFINISHED))
        .values(status=Status.cancelling, cancel_requested=True)
        .execution_options(synchronize_session=False)
    )
    session.commit()
    study = session.get(Study, study_id)
    if study is not None:
        session.refresh(study)
        if study.status in TERMINAL and study.status != Status.cancelled:
            raise StudyFinished(study.status)
