"""app.services.study_advance on a real migrated database: the orchestrator of studies, driven only by
the children's rows (moved by the real projection, as the ingester would)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db import utcnow
from app.events.schema import StatusEvent, TrainingOutcome
from app.lifecycle import studies as lifecycle_studies
from app.lifecycle.projection import apply_event
from app.lifecycle.studies import Stage
from app.models import Search, Study, Training
from app.queue import create_celery_app
from app.schemas.studies import StudySpec
from app.services.study_advance import StudyDeps, advance_study, advance_unfinished
from app.settings import Settings
from darts_core.spec.genotype import Genotype

SEARCH = {"dataset": {"name": "digits"}, "training": {"epochs": 2}}


@pytest.fixture
def deps(api_settings: Settings) -> Iterator[StudyDeps]:
    client = redis.Redis.from_url(api_settings.redis_url)
    yield StudyDeps(settings=api_settings, celery=create_celery_app(api_settings), redis_client=client)
    client.close()


def make_study(session: Session, seeds: list[int], **spec: object) -> Study:
    accepted = StudySpec.model_validate({"search": SEARCH, "seeds": seeds, **spec})
    study = Study(
        id=str(uuid.uuid4()), name="study", owner="tester", status="queued", stage=Stage.searching,
        spec=accepted.model_dump(mode="json"), created_at=utcnow(),
    )
    session.add(study)
    session.commit()
    return study


def searches_of(session: Session, study: Study) -> list[Search]:
    session.expire_all()
    query = select(Search).where(Search.study_id == study.id).order_by(Search.study_seed)
    return list(session.scalars(query))


def reload(session: Session, study: Study) -> Study:
    session.expire_all()
    found = session.get(Study, study.id)
    assert found is not None
    return found


def test_the_searching_stage_creates_one_search_per_seed_once(db_session: Session, deps: StudyDeps) -> None:
    study = make_study(db_session, [3, 7])
    for _ in range(3):
        advance_study(db_session, study.id, deps)
    searches = searches_of(db_session, study)
    assert [(s.study_seed, s.study_stage, s.status) for s in searches] == [
        (3, "searching", "queued"), (7, "searching", "queued")
    ]
    assert [s.spec["training"]["seed"] for s in searches] == [3, 7]
    assert all(s.owner == "tester" and s.celery_task_id for s in searches)
    assert reload(db_session, study).status == "queued"


def test_concurrent_orchestrators_create_each_child_once(
    db_session: Session, session_factory: sessionmaker[Session], deps: StudyDeps
) -> None:
    study = make_study(db_session, [0, 1, 2, 3])
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def advance() -> None:
        try:
            barrier.wait()
            with session_factory() as session:
                advance_study(session, study.id, deps)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=advance) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads), "an orchestrator hung"
    assert errors == []
    assert [s.study_seed for s in searches_of(db_session, study)] == [0, 1, 2, 3]


def test_a_started_child_makes_the_study_running(db_session: Session, deps: StudyDeps, set_status) -> None:
    study = make_study(db_session, [0, 1])
    advance_study(db_session, study.id, deps)
    set_status(searches_of(db_session, study)[0].id, "running")
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert (after.status, after.stage) == ("running", "searching") and after.started_at is not None


def test_a_failed_search_fails_the_study_with_its_error_and_cancels_the_others(
    db_session: Session, deps: StudyDeps, set_status
) -> None:
    study = make_study(db_session, [0, 1, 2])
    advance_study(db_session, study.id, deps)
    first, second, third = searches_of(db_session, study)
    set_status(first.id, "running")
    set_status(second.id, "failed", error="out of memory")
    advance_study(db_session, study.id, deps)

    after = reload(db_session, study)
    assert (after.status, after.stage) == ("failed", "done")
    assert f"the search of seed 1 ({second.id}) failed: out of memory" in after.error
    assert "min_successful_seeds=3" in after.error
    statuses = {s.study_seed: s.status for s in searches_of(db_session, study)}
    # The queued one is cancelled at once; the running one is asked to stop between two batches.
    assert statuses == {0: "cancelling", 1: "failed", 2: "cancelled"}


def test_min_successful_seeds_lets_the_study_go_on_without_a_failed_seed(
    db_session: Session, deps: StudyDeps, set_status
) -> None:
    study = make_study(db_session, [0, 1, 2], min_successful_seeds=2)
    advance_study(db_session, study.id, deps)
    first, second, third = searches_of(db_session, study)
    set_status(first.id, "failed", error="diverged")
    advance_study(db_session, study.id, deps)
    assert reload(db_session, study).status == "queued"  # two seeds may still succeed
    set_status(second.id, "succeeded")
    advance_study(db_session, study.id, deps)
    assert reload(db_session, study).stage == "searching"  # the third still runs
    set_status(third.id, "cancelled")  # cancelled by hand: that seed is lost too
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert after.status == "failed"
    assert f"the search of seed 0 ({first.id}) failed: diverged" in after.error
    assert f"the search of seed 2 ({third.id}) cancelled" in after.error


def test_cancel_cancels_every_child_then_the_study(db_session: Session, deps: StudyDeps, set_status) -> None:
    study = make_study(db_session, [0, 1])
    advance_study(db_session, study.id, deps)
    running, queued = searches_of(db_session, study)
    set_status(running.id, "running")
    lifecycle_studies.request_cancel(db_session, study.id)
    advance_study(db_session, study.id, deps)
    assert reload(db_session, study).status == "cancelling"
    assert {s.status for s in searches_of(db_session, study)} == {"cancelling", "cancelled"}

    set_status(running.id, "cancelled")  # the worker saw the flag
    advance_unfinished(deps_factory(db_session), deps)
    after = reload(db_session, study)
    assert (after.status, after.stage) == ("cancelled", "done") and after.finished_at is not None
    # Nothing is created once cancelled, however often it is advanced.
    advance_study(db_session, study.id, deps)
    assert len(searches_of(db_session, study)) == 2


def test_a_finished_study_cannot_be_cancelled(db_session: Session) -> None:
    study = make_study(db_session, [0])
    assert lifecycle_studies.finish(db_session, study.id, "failed", error="x")
    with pytest.raises(lifecycle_studies.StudyFinished):
        lifecycle_studies.request_cancel(db_session, study.id)
    assert not lifecycle_studies.finish(db_session, study.id, "succeeded")


def deps_factory(session: Session) -> sessionmaker[Session]:
    return sessionmaker(bind=session.get_bind(), expire_on_commit=False, autoflush=False)


# ------------------------------------------------------------------------------ selection and final


def trainings_of(session: Session, study: Study, stage: str) -> list[Training]:
    session.expire_all()
    query = select(Training).where(Training.study_id == study.id, Training.study_stage == stage)
    return list(session.scalars(query.order_by(Training.study_seed)))


def end_training(session: Session, training_id: str, status: str, valid_acc: float | None = None) -> None:
    """Move a training to `status` with the events its worker would send, through the real projection."""
    session.expire_all()
    steps = ["running", status] if session.get(Training, training_id).status == "queued" else [status]
    for step in steps:
        outcome = None
        if step == "succeeded":
            outcome = TrainingOutcome(
                test_accuracy=0.9, test_loss=0.3, valid_accuracy=valid_acc, parameters=1000
            )
        event = StatusEvent(job_id=training_id, kind="training", status=step, outcome=outcome,
                            error="diverged" if step == "failed" else None)
        assert apply_event(session, event, None) == "stored"
        session.commit()


def searched(
    session: Session, study: Study, deps: StudyDeps, record_epochs, statuses: dict[int, str]
) -> None:
    """Advance `study` to its searches, then end each (epochs recorded, so a genotype exists)."""
    advance_study(session, study.id, deps)
    for search in searches_of(session, study):
        record_epochs(search.id, 2, status=statuses.get(search.study_seed, "succeeded"))
    advance_study(session, study.id, deps)


def test_selection_trains_each_genotype_and_picks_the_best_then_the_final(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    study = make_study(db_session, [4, 2, 9], selection={"training": {"epochs": 1}},
                       final={"training": {"epochs": 3}})
    searched(db_session, study, deps, record_epochs, {})
    assert reload(db_session, study).stage == "selecting"
    selections = trainings_of(db_session, study, "selecting")
    assert [t.study_seed for t in selections] == [2, 4, 9]
    searches = {s.study_seed: s for s in searches_of(db_session, study)}
    assert all(t.search_id == searches[t.study_seed].id and t.epochs == 1 for t in selections)
    advance_study(db_session, study.id, deps)  # again: nothing more is created
    assert len(trainings_of(db_session, study, "selecting")) == 3

    by_seed = {t.study_seed: t for t in selections}
    end_training(db_session, by_seed[2].id, "succeeded", valid_acc=0.80)
    end_training(db_session, by_seed[4].id, "succeeded", valid_acc=0.91)
    advance_study(db_session, study.id, deps)
    assert reload(db_session, study).stage == "selecting"  # seed 9 still trains
    end_training(db_session, by_seed[9].id, "succeeded", valid_acc=0.91)  # a tie with seed 4
    advance_study(db_session, study.id, deps)

    after = reload(db_session, study)
    # Seeds 4 and 9 tie: the lower one wins.
    assert (after.status, after.stage, after.chosen_seed) == ("running", "final", 4)
    assert after.chosen_search_id == searches[4].id
    assert after.chosen_genotype == by_seed[4].genotype
    assert [(e["seed"], e["valid_acc"], e["chosen"]) for e in after.selection] == [
        (4, 0.91, True), (2, 0.80, False), (9, 0.91, False)
    ]
    (final,) = trainings_of(db_session, study, "final")
    assert (final.study_seed, final.search_id, final.epochs) == (4, searches[4].id, 3)
    advance_study(db_session, study.id, deps)
    assert len(trainings_of(db_session, study, "final")) == 1

    end_training(db_session, final.id, "succeeded", valid_acc=0.95)
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert (after.status, after.stage, after.error) == ("succeeded", "done", None)


def test_without_a_final_spec_the_study_ends_after_the_selection(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    study = make_study(db_session, [0, 1])
    searched(db_session, study, deps, record_epochs, {})
    first, second = trainings_of(db_session, study, "selecting")
    end_training(db_session, first.id, "succeeded", valid_acc=0.5)
    end_training(db_session, second.id, "succeeded", valid_acc=0.7)
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert (after.status, after.stage, after.chosen_seed) == ("succeeded", "done", 1)
    assert trainings_of(db_session, study, "final") == []


def test_a_seed_lost_in_search_or_selection_counts_against_min_successful_seeds(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    study = make_study(db_session, [0, 1, 2], min_successful_seeds=2)
    searched(db_session, study, deps, record_epochs, {1: "failed"})
    after = reload(db_session, study)
    assert after.stage == "selecting"
    assert [t.study_seed for t in trainings_of(db_session, study, "selecting")] == [0, 2]  # not the lost seed
    first, third = trainings_of(db_session, study, "selecting")
    end_training(db_session, third.id, "failed")
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert after.status == "failed"
    assert f"the selection training of seed 2 ({third.id}) failed: diverged" in after.error
    assert reload(db_session, study).stage == "done"
    db_session.expire_all()
    # The still-queued selection training of seed 0 is cancelled with the study.
    assert db_session.get(Training, first.id).status == "cancelled"


def test_a_failed_final_training_fails_the_study(db_session: Session, deps: StudyDeps, record_epochs) -> None:
    study = make_study(db_session, [0], final={"training": {"epochs": 2}})
    searched(db_session, study, deps, record_epochs, {})
    (selection,) = trainings_of(db_session, study, "selecting")
    end_training(db_session, selection.id, "succeeded", valid_acc=0.6)
    advance_study(db_session, study.id, deps)
    (final,) = trainings_of(db_session, study, "final")
    end_training(db_session, final.id, "failed")
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert after.status == "failed"
    assert after.error == f"the final training of seed 0 ({final.id}) failed: diverged"


def test_deleting_a_finished_study_removes_its_searches_and_trainings(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    from app.services.studies import delete_study

    study = make_study(db_session, [0])
    searched(db_session, study, deps, record_epochs, {})
    (selection,) = trainings_of(db_session, study, "selecting")
    end_training(db_session, selection.id, "succeeded", valid_acc=0.5)
    advance_study(db_session, study.id, deps)
    assert reload(db_session, study).status == "succeeded"
    delete_study(db_session, study.id, settings=deps.settings)
    db_session.expire_all()
    assert db_session.get(Study, study.id) is None and db_session.get(Training, selection.id) is None
    assert db_session.scalar(select(Search.id).where(Search.study_id == study.id)) is None


def test_a_child_created_while_the_study_is_cancelled_is_cancelled_too(
    db_session: Session, deps: StudyDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.services import searches as search_service

    study = make_study(db_session, [0, 1])
    create = search_service.create_study_search

    def cancel_in_between(session: Session, *args, **kwargs):
        # Another request cancels the study just before this orchestrator inserts its child.
        lifecycle_studies.request_cancel(session, study.id)
        return create(session, *args, **kwargs)

    monkeypatch.setattr(search_service, "create_study_search", cancel_in_between)
    advance_study(db_session, study.id, deps)
    assert {s.status for s in searches_of(db_session, study)} == {"cancelled"}
    advance_study(db_session, study.id, deps)
    assert reload(db_session, study).status == "cancelled"


def test_the_random_baseline_trains_drawn_genotypes_beside_the_searched_ones_and_may_win(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    study = make_study(db_session, [0, 1], random_baseline=2, selection={"training": {"epochs": 1}},
                       final={"training": {"epochs": 2}})
    spec = StudySpec.model_validate(study.spec)
    drawn = [genotype.to_json() for genotype in spec.random_genotypes()]
    assert drawn[0] != drawn[1] and drawn == [g.to_json() for g in spec.random_genotypes()]  # a pure draw
    searched(db_session, study, deps, record_epochs, {})
    assert [s.study_arm for s in searches_of(db_session, study)] == ["0", "0"]  # no search for random
    selections = trainings_of(db_session, study, "selecting")
    arms = sorted((t.study_arm, t.study_seed) for t in selections)
    assert arms == [("0", 0), ("0", 1), ("random", 0), ("random", 1)]
    randoms = {t.study_seed: t for t in selections if t.study_arm == "random"}
    assert [randoms[i].genotype for i in (0, 1)] == drawn
    assert all(t.search_id is None and t.spec["dataset"]["name"] == "digits" for t in randoms.values())
    advance_study(db_session, study.id, deps)
    assert len(trainings_of(db_session, study, "selecting")) == 4  # each created once

    accuracy = {("0", 0): 0.80, ("0", 1): 0.84, ("random", 0): 0.90, ("random", 1): 0.70}
    for training in selections:
        line = (training.study_arm, training.study_seed)
        end_training(db_session, training.id, "succeeded", accuracy[line])
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    chosen = (after.stage, after.chosen_arm, after.chosen_seed, after.chosen_search_id)
    assert chosen == ("final", "random", 0, None)
    assert after.chosen_genotype == drawn[0]
    assert [(e["method"], e["seed"], e["chosen"]) for e in after.selection] == [
        ("darts", 0, False), ("darts", 1, False), ("random", 0, True), ("random", 1, False)
    ]
    (final,) = trainings_of(db_session, study, "final")
    assert (final.study_arm, final.study_seed, final.search_id) == ("random", 0, None)
    assert final.genotype == drawn[0]

    from app.services.studies import study_detail

    table = {row["method"]: row for row in study_detail(db_session, study.id)["comparison"]}
    assert table["darts"]["valid_acc_mean"] == pytest.approx(0.82)
    assert table["darts"]["valid_acc_std"] == pytest.approx(0.02 * 2**0.5)
    assert table["random"]["valid_acc_mean"] == pytest.approx(0.80) and table["random"]["chosen"]
    random_row = table["random"]
    assert (random_row["runs"], random_row["succeeded"], random_row["search_seconds_mean"]) == (2, 2, None)
    assert table["darts"]["parameters_mean"] == 1000 and not table["darts"]["chosen"]


def test_a_failed_random_genotype_fails_the_study_naming_it(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    study = make_study(db_session, [0], random_baseline=1)
    searched(db_session, study, deps, record_epochs, {})
    randoms = [t for t in trainings_of(db_session, study, "selecting") if t.study_arm == "random"]
    end_training(db_session, randoms[0].id, "failed")
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert after.status == "failed"
    assert f"the selection training of random genotype 0 ({randoms[0].id}) failed: diverged" in after.error


def test_with_a_budget_the_random_baseline_draws_within_it_as_the_searches_count(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    from darts_core.search.budget import Budget, cost_table_for
    from darts_core.spec.search_spec import SearchConfig

    network = {"cells": 3, "init_channels": 8}
    free = StudySpec.model_validate({"search": SEARCH, "seeds": [0], "random_baseline": 6}).random_genotypes()
    config = SearchConfig.from_spec({**SEARCH, "constraints": {"max_parameters": 1, "network": network}})
    table = cost_table_for(config, (1, 8, 8), 10)  # digits: 1 x 8 x 8, 10 classes
    costs = sorted(table.cost(genotype)[0] for genotype in free)
    budget = int(costs[2])  # about half of the unconstrained draws are over it
    constrained = {**SEARCH, "constraints": {"max_parameters": budget, "network": network}}
    study = make_study(db_session, [0], random_baseline=6, search=constrained)
    searched(db_session, study, deps, record_epochs, {})
    randoms = sorted(
        (t for t in trainings_of(db_session, study, "selecting") if t.study_arm == "random"),
        key=lambda t: t.study_seed,
    )
    drawn = [Genotype.from_json(t.genotype) for t in randoms]
    assert len(drawn) == 6 and all(Budget(parameters=budget).fits(table.cost(g)) for g in drawn)
    # The draws under the budget are kept as they were; those over it are drawn again.
    for before, after in zip(free, drawn, strict=True):
        assert (before == after) == (table.cost(before)[0] <= budget)
    assert any(before != after for before, after in zip(free, drawn, strict=True))
