"""What creating, cancelling and deleting a job does alike for every kind (searches, trainings).

The per-owner quota counts every kind (MAX_ACTIVE_SEARCHES_PER_OWNER bounds an owner's queued, running
and cancelling jobs together); a job's row is committed before its task is sent and removed again when
the broker cannot take the task. Status changes stay the lifecycle's (`app.lifecycle`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import redis
from celery import Celery
from kombu.exceptions import OperationalError as BrokerError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.lifecycle import cancel as lifecycle_cancel
from app.lifecycle.kinds import KINDS, JobKind, kind_of
from app.lifecycle.status import TERMINAL, Status
from app.models import Dataset, LifecycleColumns, Study, StudyChildColumns
from app.queue import enqueue_task
from app.services.errors import BadRequest, Conflict, ServiceUnavailable, TooManyRequests, Unprocessable
from app.settings import Settings
from darts_core.spec.search_spec import ResourcesConfig

logger = logging.getLogger(__name__)

# When an owner at MAX_ACTIVE_SEARCHES_PER_OWNER is told to try again.
QUOTA_RETRY_AFTER_SECONDS = 30

JobT = TypeVar("JobT", bound=LifecycleColumns)


def count_active(session: Session, owner: str) -> int:
    """The owner's jobs of every kind that have not finished (queued, running, cancelling)."""
    total = 0
    for kind in KINDS.values():
        model = kind.model
        query = select(func.count()).where(model.owner == owner, model.status.not_in(TERMINAL))
        total += session.scalar(query) or 0
    return total


def count_by_status(session: Session, kind: JobKind) -> dict[str, int]:
    """How many jobs of `kind` are in each status (every status listed, 0 when none)."""
    model = kind.model
    counts = {str(status): 0 for status in Status}
    for status, count in session.execute(select(model.status, func.count()).group_by(model.status)):
        counts[str(status)] = int(count)
    return counts


def quota_exceeded(settings: Settings) -> TooManyRequests:
    limit = settings.max_active_searches_per_owner
    return TooManyRequests(
        f"you have {limit} searches and trainings queued or running, the most allowed "
        "(MAX_ACTIVE_SEARCHES_PER_OWNER): wait for one to finish or cancel one",
        retry_after=QUOTA_RETRY_AFTER_SECONDS,
    )


def require_time_limit_within(resources: ResourcesConfig, settings: Settings) -> None:
    """A spec may lower the service's SEARCH_TIME_LIMIT, never raise it (422 naming the field)."""
    limit, asked = settings.search_time_limit, resources.time_limit_seconds
    if limit is not None and asked is not None and asked > limit:
        raise Unprocessable(
            f"resources.time_limit_seconds ({asked}) exceeds this service's limit of {limit} s "
            "(SEARCH_TIME_LIMIT): ask for at most that",
            loc=("body", "resources", "time_limit_seconds"),
            error_type="time_limit_too_long",
        )


def owned_upload(session: Session, dataset_id: str, owner: str) -> Dataset:
    """The owner's uploaded dataset `dataset_id`; 422 naming `dataset.id` for any other."""
    dataset = session.get(Dataset, dataset_id)
    if dataset is None or dataset.owner != owner:
        raise Unprocessable(
            f"unknown dataset id {dataset_id!r}: upload it with POST /datasets first",
            loc=("body", "dataset", "id"),
            error_type="unknown_dataset",
        )
    return dataset


def class_names_of(session: Session, dataset_ref: str) -> list[str] | None:
    """The class names of the dataset a job loads (`dataset_ref`): an upload's, when it names them."""
    kind, _, ref = dataset_ref.partition(":")
    dataset = session.get(Dataset, ref) if kind == "upload" else None
    return None if dataset is None else dataset.class_names


def submit(session: Session, job: JobT, *, celery: Celery, settings: Settings) -> JobT:
    """Insert the `queued` row `job` (search or training) and send its task to the broker.

    TooManyRequests (429) when the owner has `max_active_searches_per_owner` active jobs already: they
    are counted before the insert and again after it (two requests at once may both be refused, never
    both accepted over the limit).

    The row is committed before the task is sent, so a worker that picks the task up at once finds it.
    When the broker cannot be reached the row is deleted again and ServiceUnavailable (503) raised:
    nothing accepted is left behind that no worker will ever run.
    """
    kind = kind_of(job)
    model = kind.model
    if count_active(session, job.owner) >= settings.max_active_searches_per_owner:
        raise quota_exceeded(settings)
    session.add(job)
    session.commit()
    if count_active(session, job.owner) > settings.max_active_searches_per_owner:
        session.execute(delete(model).where(model.id == job.id))
        session.commit()
        raise quota_exceeded(settings)
    try:
        task_id = enqueue_task(celery, kind.task, job.id, settings)
    except (BrokerError, redis.RedisError, OSError) as exc:
        logger.warning("could not enqueue %s %s: %s", kind.label, job.id, exc)
        session.execute(delete(model).where(model.id == job.id))
        session.commit()
        # The reason stays in the log: exception texts name server paths and addresses.
        raise ServiceUnavailable(
            f"the task broker (Redis) is unreachable; the {kind.label} was not created"
        ) from exc
    # Only this column: the worker may already have marked the row running.
    session.execute(update(model).where(model.id == job.id).values(celery_task_id=task_id))
    session.commit()
    job.celery_task_id = task_id
    return job


@dataclass(frozen=True)
class StudyChild:
    """Which child of which study a job is: its study, stage, arm and seed (`StudyChildColumns`)."""

    study_id: str
    stage: str
    seed: int
    arm: str = "0"


def submit_study_child(
    session: Session, job: JobT, child: StudyChild, *, celery: Celery, settings: Settings
) -> JobT | None:
    """Insert `job` as the study's `child` and send its task; None when that child exists already.

    The study's orchestrator calls it. The study passed the quota and admission when it was accepted,
    so neither is checked again. The unique (study_id, study_stage, study_arm, study_seed) of each table
    makes it idempotent: of two orchestrators creating the same child at once, one insert wins. When
    the broker cannot be reached the row stays `queued` and the reconciler
    (`app.lifecycle.sweep.reconcile_queue`) sends its task later: the study is not failed for it.
    """
    assert isinstance(job, StudyChildColumns)
    kind = kind_of(job)
    job.study_id, job.study_stage, job.study_seed = child.study_id, child.stage, child.seed
    job.study_arm = child.arm
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # another orchestrator created it first (or the study is gone)
        session.rollback()
        return None
    try:
        task_id = enqueue_task(celery, kind.task, job.id, settings)
    except (BrokerError, redis.RedisError, OSError) as exc:
        logger.warning("could not enqueue %s %s of study %s (the reconciler will): %s",
                       kind.label, job.id, child.study_id, exc)
        return job
    session.execute(update(kind.model).where(kind.model.id == job.id).values(celery_task_id=task_id))
    session.commit()
    job.celery_task_id = task_id
    return job


def raise_cancel_flag(redis_client: redis.Redis, settings: Settings, job_id: str) -> None:
    """Raise the Redis flag a running worker polls between batches (`{prefix}:cancel:{id}`, every 0.5 s).

    Best effort: the worker also reads the row's `cancel_requested` (every 2 s), so a cancel still
    reaches it, a little later, while Redis is unreachable.
    """
    try:
        expiry = timedelta(seconds=settings.broker_visibility_timeout)
        redis_client.set(lifecycle_cancel.cancel_key(settings.redis_prefix, job_id), "1", ex=expiry)
    except (redis.RedisError, OSError) as exc:
        logger.warning("could not set the cancel flag of %s (the SQL flag stands): %s", job_id, exc)


def revoke_task(celery: Celery, task_id: str) -> None:
    """Revoke a queued job's Celery task (never terminate it). Best effort: a worker that receives the
    task anyway finds the row cancelled and does not start it."""
    try:
        celery.control.revoke(task_id)
    except (BrokerError, redis.RedisError, OSError) as exc:
        logger.warning("could not revoke task %s: %s", task_id, exc)


def cancel(
    session: Session,
    job: JobT,
    *,
    revoke: Callable[[str], None],
    redis_client: redis.Redis,
    settings: Settings,
) -> JobT:
    """Cancel a job (idempotent; see `app.lifecycle.cancel.cancel`). Finished: Conflict (409)."""
    try:
        return lifecycle_cancel.cancel(
            session,
            job,
            revoke=revoke,
            raise_flag=lambda target: raise_cancel_flag(redis_client, settings, target),
        )
    except lifecycle_cancel.AlreadyFinished as finished:
        raise Conflict(
            f"{kind_of(job).label} {job.id!r} already finished with status {finished.status!r}; "
            "it cannot be cancelled"
        ) from None


def require_finished(job: LifecycleColumns) -> None:
    """Conflict (409) while the job may still run (deleting it then would pull files from under it)."""
    if job.status not in TERMINAL:
        label = kind_of(job).label
        raise Conflict(
            f"{label} {job.id!r} is {job.status}: cancel it and wait until it has finished to delete it"
        )


def require_deletable(session: Session, job: LifecycleColumns) -> None:
    """`require_finished`, and Conflict (409) while the job belongs to a study that has not finished:
    the study reads its children to go on (a deleted search would be made again, a seed dropped)."""
    require_finished(job)
    study_id = job.study_id if isinstance(job, StudyChildColumns) else None
    if study_id is None:
        return
    study_status = session.scalar(select(Study.status).where(Study.id == study_id))
    if study_status is not None and study_status not in TERMINAL:
        raise Conflict(
            f"{kind_of(job).label} {job.id!r} belongs to study {study_id!r}, which is {study_status}: "
            "delete it once the study has finished (cancel the study to end it sooner)"
        )


def epoch_cursor(cursor: str | None) -> int:
    """The epoch after which a page of epochs starts (`?cursor=`, a next_cursor; empty: the start)."""
    if not cursor:
        return 0
    if cursor.isascii() and cursor.isdigit() and len(cursor) <= 9:
        return int(cursor)
    raise BadRequest(f"invalid cursor {cursor!r}: pass back a next_cursor this API returned")
