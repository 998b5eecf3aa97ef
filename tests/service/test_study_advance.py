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
from app.lifecycle import studies as lifecycle_studies
from app.lifecycle.studies import Stage
from app.models import Search, Study
from app.queue import create_celery_app
from app.services.study_advance import StudyDeps, advance_study, advance_unfinished
from app.settings import Settings
from app.study_schemas import StudySpec

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
