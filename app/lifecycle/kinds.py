"""The kinds of job the lifecycle drives, each described once: its table, epoch table and task.

Every lifecycle function takes the kind (default: searches) instead of naming the `searches` table, so
searches and trainings share one status table, one lease, one projection, one cancel and one sweep.
A new kind of job (a study's children are searches and trainings) needs one `JobKind` here, a model
with `LifecycleColumns`, and its epoch projection in `app.lifecycle.projection`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from app.models import LifecycleColumns, Search, SearchEpoch, Training, TrainingEpoch
from app.queue import RUN_SEARCH_TASK, RUN_TRAINING_TASK

KindName = Literal["search", "training"]


@dataclass(frozen=True)
class JobKind:
    """One kind of job: `model` holds its rows (with `LifecycleColumns`), `epoch_model` its epochs
    (`epoch_fk` names their column pointing at the job), `task` is the Celery task that runs one."""

    name: KindName
    model: type[Any]
    epoch_model: type[Any]
    epoch_fk: str
    task: str

    @property
    def label(self) -> str:
        """How messages name one job of this kind ("search", "training")."""
        return self.name


SEARCH = JobKind("search", Search, SearchEpoch, "search_id", RUN_SEARCH_TASK)
TRAINING = JobKind("training", Training, TrainingEpoch, "training_id", RUN_TRAINING_TASK)

#: Every kind, by name (the `kind` of an event).
KINDS: dict[str, JobKind] = {kind.name: kind for kind in (SEARCH, TRAINING)}


def kind_of(job: LifecycleColumns) -> JobKind:
    """The kind of a job row."""
    for kind in KINDS.values():
        if isinstance(job, kind.model):
            return kind
    raise TypeError(f"{type(job).__name__} is not a lifecycle job")
