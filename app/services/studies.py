"""Studies: create (validated up front, then advanced), list, read with their stages, cancel, delete.

The orchestration itself is `app.services.study_advance`; status changes are the lifecycle's
(`app.lifecycle.studies`, `app.lifecycle.cancel`).
"""

from __future__ import annotations

import shutil
import statistics
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from app.db import utcnow
from app.lifecycle import studies as lifecycle_studies
from app.lifecycle.status import TERMINAL, Status
from app.lifecycle.studies import Stage
from app.models import Dataset, Search, SearchEpoch, Study, Training, TrainingEpoch
from app.schemas.searches import UploadedDatasetSpec
from app.schemas.studies import RANDOM_ARM, StudySpec
from app.services import admission, jobs
from app.services.errors import Conflict, NotFound, TooManyRequests, Unprocessable
from app.services.pagination import encode_cursor, older_than
from app.services.random_baseline import random_baseline_genotypes
from app.services.study_advance import Child, StudyDeps, advance_study, children
from app.settings import Settings
from app.storage import search_dir, training_dir

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


def _require_own_dataset(session: Session, dataset: Any, owner: str, loc: tuple[str, ...]) -> Dataset | None:
    if not isinstance(dataset, UploadedDatasetSpec):
        return None
    row = session.get(Dataset, dataset.id)
    if row is None or row.owner != owner:
        raise Unprocessable(
            f"unknown dataset id {dataset.id!r}: upload it with POST /datasets first",
            loc=("body", *loc, "dataset", "id"),
            error_type="unknown_dataset",
        )
    return row


def _with_location(error: Unprocessable, *prefix: str | int) -> Unprocessable:
    """The same 422, its `loc` moved under the study's field (`body.search...`, `body.methods.1...`)."""
    for issue in error.detail:
        loc = issue["loc"]
        issue["loc"] = [loc[0], *prefix, *loc[1:]] if loc and loc[0] == "body" else [*prefix, *loc]
    return error


def create_study(session: Session, spec: StudySpec, *, deps: StudyDeps, owner: str) -> Study:
    """Accept a study owned by `owner` and start it (its searches are created before this returns).

    Everything is checked before anything is created: the uploaded datasets are the owner's, the
    search fits a worker (admission), its time limit and the trainings' are within the service's, and
    the owner's quota of active searches leaves room for one search per seed (429 otherwise).
    """
    uploaded = _require_own_dataset(session, spec.search.dataset, owner, ("search",))
    for field, training in (("selection", spec.selection), ("final", spec.final)):
        if training is not None and training.dataset is not None:
            _require_own_dataset(session, training.dataset, owner, (field,))
    search = spec.search
    if search.name is None and uploaded is not None:
        search = search.model_copy(update={"name": f"{uploaded.name} search"})
    try:
        jobs.require_time_limit_within(search.resources, deps.settings)
        admission.require_fits(session, search, deps.settings, owner=owner)
    except Unprocessable as error:
        raise _with_location(error, "search") from None
    for index, arm in enumerate(spec.method_arms() if spec.methods is not None else []):
        assert arm.search is not None
        try:
            admission.require_fits(session, arm.search, deps.settings, owner=owner)
        except Unprocessable as error:  # a method of its own memory (GDAS computes one op per edge...)
            raise _with_location(error, "methods", index) from None
    random_baseline_genotypes(session, spec, owner)  # a budget it cannot draw within is refused now
    # The trainings are created stages later: a limit they would be refused for fails the study then.
    for field, training in (("selection", spec.selection), ("final", spec.final)):
        if training is None:
            continue
        try:
            jobs.require_time_limit_within(training.resources, deps.settings)
        except Unprocessable as error:
            raise _with_location(error, field) from None
    settings = deps.settings
    active = jobs.count_active(session, owner)
    searches = len(spec.seeds) * len(spec.method_arms())
    if active + searches > settings.max_active_searches_per_owner:
        raise _over_quota(searches, active, settings)
    name = spec.name or f"{search.name} study"
    accepted = spec.model_copy(
        update={"name": name, "search": search, "min_successful_seeds": spec.required_successes()}
    )
    study = Study(
        id=str(uuid.uuid4()),
        name=name,
        owner=owner,
        status=Status.queued,
        stage=Stage.searching,
        spec=accepted.model_dump(mode="json"),
        created_at=utcnow(),
    )
    session.add(study)
    session.commit()
    # The sweep would create the searches too (the study is durable from here on): this saves a wait.
    advance_study(session, study.id, deps)
    # Two requests at once may both have passed the count above: count again with this study's
    # searches in, as jobs.submit does (both may be refused, never both accepted over the limit).
    total = jobs.count_active(session, owner)
    if total > settings.max_active_searches_per_owner:
        _withdraw(session, study.id, deps)
        raise _over_quota(searches, max(0, total - searches), settings)
    session.refresh(study)
    return study


def _over_quota(searches: int, active: int, settings: Settings) -> TooManyRequests:
    return TooManyRequests(
        f"this study runs {searches} searches at once and you have {active} searches and "
        "trainings queued or running, "
        f"more than the {settings.max_active_searches_per_owner} allowed "
        "(MAX_ACTIVE_SEARCHES_PER_OWNER): use fewer seeds or methods, or wait for searches to finish",
        retry_after=jobs.QUOTA_RETRY_AFTER_SECONDS,
    )


def _withdraw(session: Session, study_id: str, deps: StudyDeps) -> None:
    """Cancel a study refused after its searches were created, and remove it when nothing of it runs
    (queued searches are cancelled at once; one a worker started already ends `cancelled` later)."""
    try:
        lifecycle_studies.request_cancel(session, study_id)
    except lifecycle_studies.StudyFinished:
        pass  # it ended otherwise already (its children were cancelled then)
    study = advance_study(session, study_id, deps)
    if study is not None and study.status in TERMINAL:
        delete_study(session, study_id, settings=deps.settings)


def list_studies(
    session: Session,
    *,
    status: str | None = None,
    limit: int = DEFAULT_PAGE_SIZE,
    cursor: str | None = None,
    owner: str | None = None,
) -> tuple[list[Study], str | None]:
    """Newest first (only `owner`'s when given); one page and the cursor of the next (None: the last)."""
    query = select(Study).order_by(Study.created_at.desc(), Study.id.desc()).limit(limit + 1)
    if owner is not None:
        query = query.where(Study.owner == owner)
    if status is not None:
        query = query.where(Study.status == status)
    if cursor is not None:
        query = query.where(older_than(Study.created_at, Study.id, cursor))
    rows = list(session.scalars(query))
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].created_at, rows[-1].id)


def get_study(session: Session, study_id: str) -> Study:
    study = session.get(Study, study_id)
    if study is None:
        raise NotFound(f"study {study_id!r} not found")
    return study


def _child_public(child: Child) -> dict[str, Any]:
    row = child.row
    return {
        "kind": child.kind,
        "id": row.id,
        "arm": child.arm,
        "seed": child.seed,
        "status": row.status,
        "epoch": row.epoch,
        "epochs": row.epochs,
        "valid_acc": child.valid_acc,
        "test_accuracy": getattr(row, "test_accuracy", None),
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "error": row.error,
    }


def _run_seconds(child: Child, now: datetime) -> float:
    start: datetime | None = child.row.started_at
    if start is None:
        return 0.0
    end: datetime = child.row.finished_at or now
    return max(0.0, (end - start).total_seconds())


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def comparison(spec: StudySpec, study: Study, found: list[Child], now: datetime) -> list[dict[str, Any]]:
    """Per arm (each method, then the random baseline): its selection trainings' accuracy over the
    seeds, the networks' size and the searches' time, from the children as they are now."""
    rows = []
    for arm in spec.arms():
        selections = [c for c in found if c.stage == Stage.selecting and c.arm == arm.key]
        done = [c.row for c in selections if c.status == Status.succeeded]
        accuracies = [float(row.valid_accuracy) for row in done if row.valid_accuracy is not None]
        searches = [c for c in found if c.stage == Stage.searching and c.arm == arm.key and c.finished]
        rows.append({
            "arm": arm.key,
            "method": arm.label,
            "runs": spec.random_baseline if arm.key == RANDOM_ARM else len(spec.seeds),
            "succeeded": len(done),
            "valid_acc_mean": _mean(accuracies),
            "valid_acc_std": statistics.stdev(accuracies) if len(accuracies) >= 2 else None,
            "test_accuracy_mean": _mean([row.test_accuracy for row in done if row.test_accuracy is not None]),
            "parameters_mean": _mean([row.parameters for row in done if row.parameters is not None]),
            "multiply_adds_mean": _mean([row.multiply_adds for row in done if row.multiply_adds is not None]),
            "search_seconds_mean": _mean([_run_seconds(c, now) for c in searches]) if searches else None,
            "best_valid_acc": max(accuracies, default=None),
            "chosen": study.chosen_seed is not None and (study.chosen_arm or "0") == arm.key,
        })
    return rows


def study_detail(session: Session, study_id: str) -> dict[str, Any]:
    """The study with its stages' children, the selection side by side, and its times (StudyPublic)."""
    study = get_study(session, study_id)
    found = children(session, study_id)
    now = utcnow()
    by_stage = {stage: [_child_public(c) for c in found if c.stage == stage] for stage in Stage}
    finals = by_stage[Stage.final]
    end = study.finished_at or now
    return {
        **{key: getattr(study, key) for key in (
            "id", "name", "owner", "status", "stage", "created_at", "started_at", "finished_at", "error",
            "chosen_seed", "chosen_arm", "chosen_search_id", "chosen_genotype", "selection", "spec",
        )},
        "comparison": comparison(StudySpec.model_validate(study.spec), study, found, now),
        "stages": {"search": by_stage[Stage.searching], "selection": by_stage[Stage.selecting],
                   "final": finals[0] if finals else None},
        "wall_seconds": (end - study.created_at).total_seconds(),
        "child_seconds": sum(_run_seconds(child, now) for child in found),
    }


def child_ids(session: Session, study_id: str) -> list[str]:
    """The ids of the study's searches and trainings."""
    return [child.row.id for child in children(session, study_id)]


def cancel_study(session: Session, study_id: str, *, deps: StudyDeps) -> Study:
    """Cancel the study and every child (idempotent); Conflict (409) when it had ended otherwise."""
    get_study(session, study_id)
    try:
        lifecycle_studies.request_cancel(session, study_id)
    except lifecycle_studies.StudyFinished as finished:
        raise Conflict(
            f"study {study_id!r} already finished with status {finished.status!r}; it cannot be cancelled"
        ) from None
    study = advance_study(session, study_id, deps)
    assert study is not None
    return study


def delete_study(session: Session, study_id: str, *, settings: Settings) -> None:
    """Remove a finished study with its children, their epochs and artifacts; Conflict (409) before."""
    study = get_study(session, study_id)
    if study.status not in TERMINAL:
        raise Conflict(
            f"study {study_id!r} is {study.status}: cancel it and wait until it has finished to delete it"
        )
    found = children(session, study_id)
    if any(not child.finished for child in found):
        raise Conflict(f"study {study_id!r} still has children running: wait until they have stopped")
    search_ids = [child.row.id for child in found if child.kind == "search"]
    training_ids = [child.row.id for child in found if child.kind == "training"]
    session.execute(delete(TrainingEpoch).where(TrainingEpoch.training_id.in_(training_ids)))
    session.execute(delete(Training).where(Training.id.in_(training_ids)))
    session.execute(delete(SearchEpoch).where(SearchEpoch.search_id.in_(search_ids)))
    session.execute(delete(Search).where(Search.id.in_(search_ids)))
    session.execute(delete(Study).where(Study.id == study_id))
    session.commit()
    for search_id in search_ids:
        shutil.rmtree(search_dir(settings, search_id), ignore_errors=True)
    for training_id in training_ids:
        shutil.rmtree(training_dir(settings, training_id), ignore_errors=True)
