"""Trainings: create (and enqueue), list, read, epochs, cancel, delete, weights.

A training retrains one genotype from scratch. `create_training` is the one way one comes to be: the
API's `POST /trainings` calls it, and so can an orchestrator (a study) with its own owner. Status
changes are the lifecycle's (`app.lifecycle`), shared with searches through `app.services.jobs`.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis
from celery import Celery
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.lifecycle.status import Status
from app.models import Search, SearchEpoch, Training, TrainingEpoch
from app.schemas.common import MAX_SEARCH_NAME
from app.schemas.searches import UploadedDatasetSpec
from app.schemas.trainings import TrainingSpec
from app.services import admission, jobs
from app.services.errors import Conflict, NotFound, Unprocessable
from app.services.pagination import encode_cursor, older_than
from app.settings import Settings
from app.storage import training_dir, training_weights_path


def _parse_genotype(value: dict[str, Any] | str) -> dict[str, Any]:
    """The genotype's JSON form, validated against the DARTS primitives; 422 naming `genotype`."""
    from darts_core.spec.genotype import Genotype

    try:
        genotype = Genotype.from_json(value) if isinstance(value, dict) else Genotype.from_darts(value)
        genotype.validate()
    except ValueError as exc:
        raise Unprocessable(
            f"invalid genotype: {exc}", loc=("body", "genotype"), error_type="invalid_genotype"
        ) from None
    return genotype.to_json()


def _search_genotype(session: Session, search: Search, epoch: int | None) -> dict[str, Any]:
    """The genotype a training of `search` trains: `epoch`'s, or the final one of a finished search."""
    if epoch is not None:
        record = session.scalar(
            select(SearchEpoch).where(SearchEpoch.search_id == search.id, SearchEpoch.epoch == epoch)
        )
        if record is None:
            raise Unprocessable(
                f"search {search.id!r} has no epoch {epoch} (finished epochs: {search.epoch})",
                loc=("body", "epoch"),
                error_type="unknown_epoch",
            )
        return record.genotype
    if search.status != Status.succeeded or search.genotype is None:
        raise Conflict(
            f"search_id: search {search.id!r} is {search.status} and has no final genotype to train; "
            "wait until it has succeeded, or give `epoch` to train an earlier epoch's genotype"
        )
    return search.genotype


def create_training(
    session: Session,
    spec: TrainingSpec,
    *,
    celery: Celery,
    settings: Settings,
    owner: str,
    may_read: Callable[[Search], bool] | None = None,
) -> Training:
    """Insert a `queued` training owned by `owner` (`new_training`) and send its task to the broker
    (`jobs.submit`: quota 429, broker 503)."""
    training = new_training(session, spec, settings=settings, owner=owner, may_read=may_read)
    return jobs.submit(session, training, celery=celery, settings=settings)


def new_training(
    session: Session,
    spec: TrainingSpec,
    *,
    settings: Settings,
    owner: str,
    may_read: Callable[[Search], bool] | None = None,
) -> Training:
    """The `queued` training row of `spec` owned by `owner`, checked and not yet added to the session.

    The genotype comes from `spec.genotype` or from the search `spec.search_id` (which `may_read`
    must allow, by default: `owner`'s own; 404 otherwise); the dataset defaults to the search's. Bad
    input is a 422 naming the field; a search without the genotype asked for, 409 (or 422 for a
    missing `epoch`). Quota (429), broker (503) and admission (422) as for searches.
    """
    if (spec.genotype is None) == (spec.search_id is None):
        raise Unprocessable(
            "give exactly one of genotype (its JSON form or the DARTS string) and search_id",
            loc=("body", "genotype"),
            error_type="genotype_source",
        )
    if spec.epoch is not None and spec.search_id is None:
        raise Unprocessable("epoch needs search_id", loc=("body", "epoch"), error_type="epoch_without_search")
    dataset = spec.dataset
    search: Search | None = None
    if spec.search_id is not None:
        search = session.get(Search, spec.search_id)
        allowed = may_read or (lambda found: found.owner == owner)
        if search is None or not allowed(search):
            raise NotFound(f"search {spec.search_id!r} not found")
        genotype = _search_genotype(session, search, spec.epoch)
        if dataset is None:
            dataset = search.spec["dataset"]
            spec = TrainingSpec.model_validate({**spec.model_dump(mode="json"), "dataset": dataset})
            dataset = spec.dataset
    else:
        assert spec.genotype is not None
        genotype = _parse_genotype(spec.genotype)
    if dataset is None:
        raise Unprocessable(
            "dataset is required when the genotype is given (it defaults to the search's with search_id)",
            loc=("body", "dataset"),
            error_type="missing",
        )
    if isinstance(dataset, UploadedDatasetSpec):
        # The search's upload may be another owner's (an admin retraining it): the owner must own it.
        jobs.owned_upload(session, dataset.id, owner)
        ref = f"upload:{dataset.id}"
    else:
        ref = f"builtin:{dataset.name}"
    jobs.require_time_limit_within(spec.resources, settings)
    admission.require_training_fits(session, spec, genotype, settings, owner=owner)
    name = spec.name or _default_name(search, spec.epoch)
    spec_json = spec.model_dump(mode="json")
    spec_json.update(name=name, genotype=genotype)
    training = Training(
        id=str(uuid.uuid4()),
        name=name,
        owner=owner,
        status=Status.queued,
        spec=spec_json,
        dataset_ref=ref,
        class_names=jobs.class_names_of(session, ref),
        created_at=utcnow(),
        epoch=0,
        epochs=spec.training.epochs,
        genotype=genotype,
        search_id=spec.search_id,
        search_epoch=spec.epoch,
    )
    return training


def _default_name(search: Search | None, epoch: int | None) -> str:
    if search is None:
        return "training"
    suffix = f" (epoch {epoch}) training" if epoch is not None else " training"
    return f"{search.name[: MAX_SEARCH_NAME - len(suffix)]}{suffix}"


def list_trainings(
    session: Session,
    *,
    status: str | None = None,
    limit: int,
    cursor: str | None = None,
    owner: str | None = None,
) -> tuple[list[Training], str | None]:
    """Newest first (only `owner`'s when given); one page and the cursor of the next (None: last page)."""
    query = select(Training).order_by(Training.created_at.desc(), Training.id.desc()).limit(limit + 1)
    if owner is not None:
        query = query.where(Training.owner == owner)
    if status is not None:
        query = query.where(Training.status == status)
    if cursor is not None:
        query = query.where(older_than(Training.created_at, Training.id, cursor))
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)


def get_training(session: Session, training_id: str) -> Training:
    training = session.get(Training, training_id)
    if training is None:
        raise NotFound(f"training {training_id!r} not found")
    return training


def list_epochs(
    session: Session, training_id: str, *, after: int = 0, limit: int | None = None
) -> list[TrainingEpoch]:
    """Epoch records of a training with epoch > `after`, in order."""
    get_training(session, training_id)
    query = (
        select(TrainingEpoch)
        .where(TrainingEpoch.training_id == training_id, TrainingEpoch.epoch > after)
        .order_by(TrainingEpoch.epoch)
    )
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def epoch_after_event_id(session: Session, training_id: str, last_event_id: str) -> int:
    """The epoch an SSE `Last-Event-ID` stands for (a stream entry id of one of its epochs, or a number)."""
    if last_event_id.isascii() and last_event_id.isdigit() and len(last_event_id) <= 9:
        return int(last_event_id)
    epoch = session.scalar(
        select(TrainingEpoch.epoch).where(
            TrainingEpoch.training_id == training_id, TrainingEpoch.stream_id == last_event_id
        )
    )
    if epoch is None:
        raise Unprocessable(
            f"Last-Event-ID {last_event_id!r} is not an event of training {training_id!r}",
            loc=("header", "last-event-id"),
        )
    return epoch


def cancel_training(
    session: Session,
    training_id: str,
    *,
    revoke: Callable[[str], None],
    redis_client: redis.Redis,
    settings: Settings,
) -> Training:
    """Cancel a training (idempotent; as `searches.cancel_search`). Finished: Conflict (409)."""
    training = get_training(session, training_id)
    return jobs.cancel(session, training, revoke=revoke, redis_client=redis_client, settings=settings)


def delete_training(session: Session, training_id: str, *, settings: Settings) -> None:
    """Remove a finished training, its epochs, checkpoints and weights; Conflict (409) while it may run
    or its study has not finished."""
    jobs.require_deletable(session, get_training(session, training_id))
    session.execute(delete(TrainingEpoch).where(TrainingEpoch.training_id == training_id))
    session.execute(delete(Training).where(Training.id == training_id))
    session.commit()
    shutil.rmtree(training_dir(settings, training_id), ignore_errors=True)


def weights_file(session: Session, training_id: str, *, settings: Settings) -> Path:
    """The trained weights (safetensors) of a succeeded training; Conflict (409) before that."""
    training = get_training(session, training_id)
    path = training_weights_path(settings, training_id)
    if training.status != Status.succeeded or not path.is_file():
        raise Conflict(
            f"training {training_id!r} is {training.status}: its weights are served once it has succeeded"
        )
    return path
