"""The study orchestrator: `advance_study` moves a study on from its children's statuses in SQL.

It holds no state of its own: every call reads the study and its children (searches, trainings) and
does what is due, so any process may call it any number of times, at once, and after a restart:

- the periodic sweep of every ingester calls it for each unfinished study (`advance_unfinished`, which
  also cancels any child still queued or running under a finished study);
- the ingester calls it right after it stored a child's terminal status;
- `POST /studies` and `POST /studies/{id}/cancel` call it once themselves, so nothing waits a sweep.

A study compares arms (`StudySpec.arms`): each method of `methods` runs a search per seed, and the
random baseline's genotypes are drawn from the search space; the selection trains every found or
drawn genotype alike and the best of them all is chosen.

Idempotent and safe when concurrent: a child is created at most once (the unique (study, stage, arm,
seed) of searches and trainings: the insert that loses is rolled back and ignored), and the study's
stage and status change through conditional updates (`app.lifecycle.studies`) that one caller wins.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from celery import Celery
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.lifecycle import cancel as lifecycle_cancel
from app.lifecycle import studies as lifecycle_studies
from app.lifecycle.status import TERMINAL, Status
from app.lifecycle.studies import Stage
from app.models import Search, Study, Training
from app.schemas.common import MAX_SEARCH_NAME
from app.schemas.studies import RANDOM_ARM, StudyArm, StudySpec, StudyTrainingSpec
from app.schemas.trainings import TrainingSpec
from app.services import jobs, trainings
from app.services import searches as search_service
from app.services.errors import ServiceError
from app.services.random_baseline import random_baseline_genotypes
from app.settings import Settings
from darts_core.spec.genotype import Genotype

logger = logging.getLogger(__name__)


@dataclass
class StudyDeps:
    """What creating and cancelling children needs: the settings, the task broker, Redis (cancel flags)."""

    settings: Settings
    celery: Celery
    redis_client: redis.Redis


_WHAT = {Stage.searching: "search", Stage.selecting: "selection training", Stage.final: "final training"}


@dataclass
class Child:
    """One search or training of a study, as the orchestrator reads it."""

    kind: str  # "search" or "training"
    row: Any  # the Search or Training row
    stage: Stage
    seed: int
    arm: str = "0"

    @property
    def key(self) -> tuple[str, int]:
        """Which line of its stage it is: (arm, seed)."""
        return self.arm, self.seed

    @property
    def status(self) -> Status:
        return Status(self.row.status)

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL

    @property
    def started_at(self) -> datetime | None:
        value: datetime | None = self.row.started_at
        return value

    @property
    def valid_acc(self) -> float | None:
        """The selection metric: a training's validation accuracy (a search's best, for searches)."""
        value = self.row.best_valid_acc if self.kind == "search" else self.row.valid_accuracy
        return None if value is None else float(value)

    def describe(self) -> str:
        what = _WHAT.get(self.stage, self.kind)
        reason = f": {self.row.error}" if self.row.error else ""
        return f"the {what} of {_line_name(self.arm, self.seed)} ({self.row.id}) {self.status}{reason}"


def _line_name(arm: str, seed: int) -> str:
    """A line of a stage in words: "seed 3", "seed 3 of method 1", "random genotype 2"."""
    if arm == RANDOM_ARM:
        return f"random genotype {seed}"
    return f"seed {seed}" if arm == "0" else f"seed {seed} of method {arm}"


def _child(kind: str, row: Search | Training) -> Child:
    return Child(kind, row, Stage(str(row.study_stage)), int(row.study_seed or 0), str(row.study_arm))


def children(session: Session, study_id: str) -> list[Child]:
    """Every child of the study, searches first, each stage in (arm, seed) order."""
    searches = select(Search).where(Search.study_id == study_id).order_by(Search.study_arm, Search.study_seed)
    found = [_child("search", row) for row in session.scalars(searches)]
    query = select(Training).where(Training.study_id == study_id)
    order = (Training.study_stage, Training.study_arm, Training.study_seed)
    found += [_child("training", row) for row in session.scalars(query.order_by(*order))]
    return found


def _in_stage(found: Sequence[Child], stage: Stage) -> dict[tuple[str, int], Child]:
    return {child.key: child for child in found if child.stage == stage}


def _cancel_children(session: Session, found: Sequence[Child], deps: StudyDeps) -> None:
    """Cancel every unfinished child (idempotent: a cancelling one only gets its flag again)."""
    for child in found:
        if child.finished:
            continue
        try:
            lifecycle_cancel.cancel(
                session,
                child.row,
                revoke=lambda task_id: jobs.revoke_task(deps.celery, task_id),
                raise_flag=lambda job_id: jobs.raise_cancel_flag(deps.redis_client, deps.settings, job_id),
            )
        except lifecycle_cancel.AlreadyFinished:
            continue


def _fail(session: Session, study: Study, found: Sequence[Child], deps: StudyDeps, error: str) -> None:
    if lifecycle_studies.finish(session, study.id, Status.failed, error=error):
        logger.warning("study %s failed: %s", study.id, error)
    _cancel_children(session, found, deps)


def _child_name(study: Study, what: str) -> str:
    suffix = f" · {what}"
    return f"{study.name[: MAX_SEARCH_NAME - len(suffix)]}{suffix}"


def _search_spec(spec: StudySpec, study: Study, arm: StudyArm, seed: int) -> Any:
    assert arm.search is not None  # a method's arm
    training = arm.search.training.model_copy(update={"seed": seed})
    label = f"seed {seed}" if spec.methods is None else f"{arm.label} seed {seed}"
    return arm.search.model_copy(update={"training": training, "name": _child_name(study, label)})


def _searching(session: Session, study: Study, spec: StudySpec, deps: StudyDeps) -> bool:
    """Create the missing searches; once enough ended, move to `selecting`. True when it moved on."""
    existing = _in_stage(children(session, study.id), Stage.searching)
    arms = spec.method_arms()
    for arm in arms:
        for seed in spec.seeds:
            if (arm.key, seed) not in existing:
                search_service.create_study_search(
                    session, _search_spec(spec, study, arm, seed), celery=deps.celery, settings=deps.settings,
                    owner=study.owner, child=jobs.StudyChild(study.id, Stage.searching, seed, arm.key),
                )
    found = children(session, study.id)
    searches = _in_stage(found, Stage.searching)
    for arm in arms:
        line = [searches.get((arm.key, seed)) for seed in spec.seeds]
        if _too_many_failed(session, study, spec.required_successes(), found, line, deps):
            return False
    if not all(child.finished for child in searches.values()) or len(searches) < len(arms) * len(spec.seeds):
        return False
    return lifecycle_studies.move_stage(session, study.id, Stage.searching, Stage.selecting)


def _too_many_failed(
    session: Session, study: Study, needed: int, found: Sequence[Child],
    line: Sequence[Child | None], deps: StudyDeps,
) -> bool:
    """Fail the study when fewer than `needed` lines of one arm can still get through; True then.

    `line` holds each seed's child of the arm in the current stage (None: not created yet, or its
    seed was lost in an earlier stage).
    """
    lost = [c for c in line if c is not None and c.finished and c.status != Status.succeeded]
    alive = sum(1 for child in line if child is not None) - len(lost)
    if not lost or alive >= needed:
        return False
    reason = "; ".join(child.describe() for child in lost)
    _fail(session, study, found, deps, f"{reason} (min_successful_seeds={needed}, {alive} seed(s) left)")
    return True


def _refusal(refused: ServiceError) -> str:
    """The message of a service refusal (a 422's first error)."""
    return refused.detail if isinstance(refused.detail, str) else refused.detail[0]["msg"]


def _create_training(
    session: Session, study: Study, body: StudyTrainingSpec, source: dict[str, Any], stage: Stage,
    line: tuple[str, int], deps: StudyDeps,
) -> bool:
    """Create the training of stage `stage` for `line` ((arm, seed)) unless it exists; `source` is its
    genotype's (`{"search_id": ...}`, or `{"genotype": ..., "dataset": ...}` for a drawn one). A training
    the service refuses (it does not fit a worker, the search is gone) fails the study with the reason;
    False then."""
    arm, seed = line
    what = "selection" if stage == Stage.selecting else "final"
    name = _child_name(study, f"{what} {_line_name(arm, seed)}")
    spec = TrainingSpec.model_validate({**body.model_dump(mode="json"), **source, "name": name})
    try:
        training = trainings.new_training(session, spec, settings=deps.settings, owner=study.owner)
    except ServiceError as refused:
        _fail(session, study, children(session, study.id), deps,
              f"the {what} training of {_line_name(arm, seed)} could not be created: {_refusal(refused)}")
        return False
    except OperationalError:
        raise  # the database is unreachable: the sweep tries again
    except Exception:
        # Anything else would recur at every sweep and keep the study running forever. The reason
        # stays in the log (exception texts may name server paths).
        logger.exception("study %s: creating the %s training of %s failed", study.id, what,
                         _line_name(arm, seed))
        session.rollback()
        _fail(session, study, children(session, study.id), deps,
              f"the {what} training of {_line_name(arm, seed)} could not be created: an internal error "
              "(the service's log has the details)")
        return False
    jobs.submit_study_child(
        session, training, jobs.StudyChild(study.id, stage, seed, arm), celery=deps.celery,
        settings=deps.settings,
    )
    return True


def _choose(line: Sequence[Child], order: Sequence[str]) -> Child:
    """The best by selection validation accuracy; ties (and trainings without a validation split) go to
    the arm first in `order` (the methods, then the random baseline), then the lower seed."""
    def key(child: Child) -> tuple[float, int, int]:
        return (-1.0 if child.valid_acc is None else child.valid_acc, -order.index(child.arm), -child.seed)

    return max(line, key=key)


def _selection_lines(spec: StudySpec, searches: dict[tuple[str, int], Child]) -> dict[str, list[int]]:
    """Per arm, the lines the selection trains: the seeds whose search succeeded, and every random
    genotype's index."""
    lines = {
        arm.key: [s for s in spec.seeds if (c := searches.get((arm.key, s))) and c.status == Status.succeeded]
        for arm in spec.method_arms()
    }
    if spec.random_baseline:
        lines[RANDOM_ARM] = list(range(spec.random_baseline))
    return lines


def _genotype_source(
    spec: StudySpec, body: StudyTrainingSpec, searches: dict[tuple[str, int], Child], line: tuple[str, int],
    genotype: dict[str, Any] | None,
) -> dict[str, Any]:
    """Where the training of `line` takes its genotype: its search, or (random arm) `genotype` (drawn,
    or the chosen one) on the training's dataset or the search's."""
    arm, _ = line
    if arm != RANDOM_ARM:
        return {"search_id": searches[line].row.id}
    assert genotype is not None, "a random line's training needs its drawn genotype"
    drawn = genotype
    dataset = body.dataset if body.dataset is not None else spec.search.dataset
    return {"genotype": drawn, "dataset": dataset.model_dump(mode="json")}


def _selecting(session: Session, study: Study, spec: StudySpec, deps: StudyDeps) -> bool:
    """A selection training per found (or drawn) genotype; once enough ended, choose the best of all
    arms, then `final` (or done)."""
    found = children(session, study.id)
    searches, existing = _in_stage(found, Stage.searching), _in_stage(found, Stage.selecting)
    lines = _selection_lines(spec, searches)
    drawn: list[Genotype] | None = None  # the random baseline's, drawn when a line of it is created
    for key, seeds in lines.items():
        for seed in seeds:
            if (key, seed) not in existing:
                if key == RANDOM_ARM and drawn is None:
                    try:
                        drawn = random_baseline_genotypes(session, spec, study.owner)
                    except ServiceError as refused:  # e.g. the search's uploaded dataset is gone
                        reason = f"the random baseline could not be drawn: {_refusal(refused)}"
                        _fail(session, study, found, deps, reason)
                        return False
                genotype = drawn[seed].to_json() if key == RANDOM_ARM and drawn is not None else None
                source = _genotype_source(spec, spec.selection, searches, (key, seed), genotype)
                if not _create_training(session, study, spec.selection, source, Stage.selecting, (key, seed),
                                        deps):
                    return False
    found = children(session, study.id)
    selections = _in_stage(found, Stage.selecting)
    every: list[Child | None] = []
    for key, seeds in lines.items():
        line = [selections.get((key, seed)) for seed in seeds]
        # A method needs min_successful_seeds of its seeds; the random baseline every genotype.
        needed = len(seeds) if key == RANDOM_ARM else spec.required_successes()
        if _too_many_failed(session, study, needed, found, line, deps):
            return False
        every += line
    if any(child is None or not child.finished for child in every):
        return False
    succeeded = [child for child in every if child is not None and child.status == Status.succeeded]
    if not succeeded:
        # Unreachable while min_successful_seeds >= 1 holds, unless children vanished; never raise here
        # (the sweep would retry it forever and the study never end).
        reasons = "; ".join(child.describe() for child in every if child is not None)
        _fail(session, study, found, deps,
              f"no selection training succeeded, so there is no genotype to choose ({reasons or 'none ran'})")
        return False
    arms = spec.arms()
    chosen = _choose(succeeded, [arm.key for arm in arms])
    summary = []
    for arm in arms:
        for seed in lines[arm.key] if arm.key == RANDOM_ARM else spec.seeds:
            training = selections.get((arm.key, seed))
            search = searches.get((arm.key, seed))
            summary.append({
                "arm": arm.key,
                "method": arm.label,
                "seed": seed,
                "search_id": search.row.id if search else None,
                "training_id": training.row.id if training else None,
                "valid_acc": training.valid_acc if training else None,
                "status": str(training.status if training else search.status if search else Status.queued),
                "chosen": (arm.key, seed) == chosen.key,
            })
    chosen_search = searches.get(chosen.key)
    values: dict[str, Any] = {
        "chosen_seed": chosen.seed,
        "chosen_arm": chosen.arm,
        "chosen_search_id": chosen_search.row.id if chosen_search else None,
        "chosen_genotype": chosen.row.genotype,
        "selection": summary,
    }
    if spec.final is None:
        lifecycle_studies.finish(session, study.id, Status.succeeded, **values)
        return False
    return lifecycle_studies.move_stage(session, study.id, Stage.selecting, Stage.final, **values)


def _final(session: Session, study: Study, spec: StudySpec, deps: StudyDeps) -> bool:
    """The final training of the chosen genotype; the study ends with it."""
    assert spec.final is not None and study.chosen_seed is not None
    line = (study.chosen_arm or "0", study.chosen_seed)  # no arm: chosen before studies had arms
    found = children(session, study.id)
    final = _in_stage(found, Stage.final).get(line)
    if final is None:
        searches = _in_stage(found, Stage.searching)
        source = _genotype_source(spec, spec.final, searches, line, genotype=study.chosen_genotype)
        _create_training(session, study, spec.final, source, Stage.final, line, deps)
        return False
    if not final.finished:
        return False
    if final.status == Status.succeeded:
        lifecycle_studies.finish(session, study.id, Status.succeeded)
    else:
        _fail(session, study, children(session, study.id), deps, final.describe())
    return False


_STAGES: dict[Stage, Callable[[Session, Study, StudySpec, StudyDeps], bool]] = {
    Stage.searching: _searching,
    Stage.selecting: _selecting,
    Stage.final: _final,
}


def advance_study(session: Session, study_id: str, deps: StudyDeps) -> Study | None:
    """Do whatever is due for the study now (see the module docstring); returns it as it then is.

    None when the study is gone. A terminal study is left as it is.
    """
    for _ in range(len(Stage) + 1):  # one stage per round; a round that changes nothing ends it
        session.expire_all()
        study = session.get(Study, study_id)
        if study is None or study.status in TERMINAL:
            return study
        found = children(session, study_id)
        if study.status == Status.queued and any(child.started_at for child in found):
            lifecycle_studies.mark_running(session, study_id)
        if study.cancel_requested:
            _cancel_children(session, found, deps)
            if all(child.finished for child in children(session, study_id)):
                lifecycle_studies.finish(session, study_id, Status.cancelled)
            break
        spec = StudySpec.model_validate(study.spec)
        moved_on = _STAGES[Stage(study.stage)](session, study, spec, deps)
        session.expire_all()
        now = session.get(Study, study_id)
        if now is None or now.cancel_requested or now.status in (Status.failed, Status.cancelled):
            # Stopped by another caller while this one created a child: that child must not run on.
            _cancel_children(session, children(session, study_id), deps)
            break
        if not moved_on:
            break
    session.expire_all()
    return session.get(Study, study_id)


def _strays(session: Session) -> list[Child]:
    """Queued or running children of finished studies: an orchestrator created one just as the study
    ended, and died before its own check could cancel it (nothing else would)."""
    finished = select(Study.id).where(Study.status.in_(TERMINAL))
    running = (Status.queued, Status.running)
    searches = session.scalars(
        select(Search).where(Search.study_id.in_(finished), Search.status.in_(running))
    )
    trainings = session.scalars(
        select(Training).where(Training.study_id.in_(finished), Training.status.in_(running))
    )
    rows: list[tuple[str, Search | Training]] = [("search", row) for row in searches]
    rows += [("training", row) for row in trainings]
    return [_child(kind, row) for kind, row in rows]


def advance_unfinished(factory: sessionmaker[Session], deps: StudyDeps) -> int:
    """Advance every unfinished study (the sweep), and cancel what still runs of a finished one;
    returns how many studies were advanced.

    A study whose round fails is logged and left to the next sweep; the others go on.
    """
    try:
        with factory() as session:
            strays = _strays(session)
            if strays:
                logger.warning("cancelling %d search(es)/training(s) of finished studies", len(strays))
                _cancel_children(session, strays, deps)
    except OperationalError:
        raise
    except Exception:
        logger.exception("cancelling the children of finished studies failed; the next sweep tries again")
    with factory() as session:
        ids = list(session.scalars(select(Study.id).where(Study.status.in_(lifecycle_studies.UNFINISHED))))
    for study_id in ids:
        try:
            with factory() as session:
                advance_study(session, study_id, deps)
        except OperationalError:
            raise  # the database is unreachable: the caller's supervision retries the whole sweep
        except Exception:
            logger.exception("advancing study %s failed; the next sweep tries again", study_id)
    return len(ids)
