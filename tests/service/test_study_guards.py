"""What keeps a study whole: its children cannot be deleted while it runs, and a study whose state
turns out impossible ends `failed` with the reason instead of being retried forever by every sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete
from sqlalchemy.orm import Session

from app.lifecycle import studies as lifecycle_studies
from app.lifecycle.status import Status
from app.models import Dataset, Search, SearchEpoch, Study, Training
from app.services import study_advance, trainings
from app.services.study_advance import StudyDeps, advance_study, advance_unfinished, children
from darts_core.spec.genotype import DARTS_V2

from .test_auth import npz_bytes
from .test_studies import STUDY, create
from .test_study_advance import (
    deps,
    deps_factory,
    end_training,
    make_study,
    reload,
    searched,
    searches_of,
    trainings_of,
)

__all__ = ["deps"]  # the fixture, imported for the tests below


def test_a_search_of_a_running_study_cannot_be_deleted(client: TestClient, set_status) -> None:
    study = create(client)
    search_id = study["stages"]["search"][0]["id"]
    set_status(search_id, "succeeded")
    response = client.delete(f"/searches/{search_id}")
    assert response.status_code == 409, response.text
    assert f"belongs to study {study['id']!r}" in response.json()["detail"]
    assert client.get(f"/searches/{search_id}").status_code == 200
    # Once the study has ended, its children may go one by one.
    assert client.post(f"/studies/{study['id']}/cancel").status_code == 202
    assert client.delete(f"/searches/{search_id}").status_code == 204
    assert client.get(f"/studies/{study['id']}").status_code == 200


def test_a_training_of_a_running_study_cannot_be_deleted(
    client: TestClient, db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    study = create(client, {**STUDY, "seeds": [0, 1]})
    row = _study(db_session, study["id"])
    searched(db_session, row, deps, record_epochs, {})
    first, second = trainings_of(db_session, row, "selecting")
    end_training(db_session, first.id, "succeeded", valid_acc=0.5)
    response = client.delete(f"/trainings/{first.id}")
    assert response.status_code == 409, response.text
    assert "belongs to study" in response.json()["detail"]
    end_training(db_session, second.id, "succeeded", valid_acc=0.7)
    advance_study(db_session, study["id"], deps)
    assert client.get(f"/studies/{study['id']}").json()["status"] == "succeeded"
    assert client.delete(f"/trainings/{first.id}").status_code == 204


def _study(session: Session, study_id: str) -> Study:
    session.expire_all()
    study = session.get(Study, study_id)
    assert study is not None
    return study


def test_a_selection_with_nothing_to_choose_fails_the_study(
    db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    """Children removed from under a study (as deleting them could before) leave no genotype to choose:
    the study fails saying so, where the sweep used to raise on it at every round."""
    study = make_study(db_session, [0, 1])
    searched(db_session, study, deps, record_epochs, {})
    assert reload(db_session, study).stage == "selecting"
    db_session.execute(delete(Training).where(Training.study_id == study.id))
    db_session.execute(delete(SearchEpoch))
    db_session.execute(delete(Search).where(Search.study_id == study.id))
    db_session.commit()
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert (after.status, after.stage) == ("failed", "done")
    assert "no selection training succeeded" in after.error


def test_a_study_cancelled_while_it_is_being_failed_ends_cancelled(
    db_session: Session, deps: StudyDeps, set_status
) -> None:
    """The orchestrator read the study before the cancel and goes on to fail it for a lost seed: the
    cancel wins, and the next round ends the study `cancelled`."""
    study = make_study(db_session, [0, 1])
    advance_study(db_session, study.id, deps)
    first, second = searches_of(db_session, study)
    set_status(first.id, "failed", error="out of memory")
    lifecycle_studies.request_cancel(db_session, study.id)  # concurrently, from another request
    found = children(db_session, study.id)
    study_advance._fail(db_session, reload(db_session, study), found, deps, "the search of seed 0 failed")
    assert not lifecycle_studies.finish(db_session, study.id, Status.failed, error="x")
    after = reload(db_session, study)
    assert (after.status, after.error) == ("cancelling", None)
    advance_study(db_session, study.id, deps)
    after = reload(db_session, study)
    assert (after.status, after.stage) == ("cancelled", "done")
    assert {s.status for s in searches_of(db_session, study)} == {"failed", "cancelled"}


def test_the_sweep_cancels_what_still_runs_of_a_finished_study(
    db_session: Session, deps: StudyDeps, set_status
) -> None:
    """A child inserted just as its study ended, by an orchestrator that died before checking the
    study again, would run untracked: the sweep's study pass cancels it."""
    study = make_study(db_session, [0, 1, 2])
    advance_study(db_session, study.id, deps)
    first, second, third = searches_of(db_session, study)
    set_status(first.id, "running")
    set_status(third.id, "succeeded")
    # The study ends without its orchestrator cancelling the children (it died in between).
    assert lifecycle_studies.finish(db_session, study.id, Status.failed, error="lost")
    other = make_study(db_session, [0])  # an unfinished study's children are left alone
    advance_study(db_session, other.id, deps)
    advance_unfinished(deps_factory(db_session), deps)
    statuses = [s.status for s in searches_of(db_session, study)]
    assert statuses == ["cancelling", "cancelled", "succeeded"]
    assert [s.status for s in searches_of(db_session, other)] == ["queued"]
    assert reload(db_session, study).status == "failed"


def test_an_unexpected_error_creating_a_training_fails_the_study(
    db_session: Session, deps: StudyDeps, record_epochs, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> Training:
        raise RuntimeError("/srv/secret/path: something broke")

    monkeypatch.setattr(trainings, "new_training", broken)
    study = make_study(db_session, [0])
    searched(db_session, study, deps, record_epochs, {})
    after = reload(db_session, study)
    assert (after.status, after.stage) == ("failed", "done")
    assert after.error == (
        "the selection training of seed 0 could not be created: an internal error "
        "(the service's log has the details)"
    )


def test_an_uploaded_dataset_stays_while_a_study_or_a_training_needs_it(
    client: TestClient, db_session: Session, record_epochs
) -> None:
    dataset = client.post("/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    path = Path(db_session.get(Dataset, dataset["id"]).path)
    body = {
        "search": {"dataset": {"id": dataset["id"]}, "training": {"epochs": 2}},
        "seeds": [0],
        "random_baseline": 1,
        "selection": {"training": {"epochs": 1}},
    }
    study = create(client, body)
    (search,) = study["stages"]["search"]

    def delete() -> tuple[int, str]:
        response = client.delete(f"/datasets/{dataset['id']}")
        return response.status_code, response.text

    assert delete()[0] == 409  # its search is queued
    # Every child has finished, but the study's selection (its random genotype too) still loads it.
    record_epochs(search["id"], 2, status="succeeded")
    status, detail = delete()
    assert status == 409 and f"used by study {study['id']!r}, which has not finished" in detail
    # A training of the found genotype, outside the study, on the search's dataset.
    training = client.post("/trainings", json={"search_id": search["id"], "training": {"epochs": 1}}).json()
    assert client.post(f"/studies/{study['id']}/cancel").status_code == 202
    status, detail = delete()
    assert status == 409 and "used by a search or a training that has not finished" in detail
    assert path.exists() and client.get(f"/datasets/{dataset['id']}").status_code == 200

    assert client.post(f"/trainings/{training['id']}/cancel").status_code == 202
    assert delete()[0] == 204
    assert not path.exists() and client.get(f"/datasets/{dataset['id']}").status_code == 404


def test_a_study_whose_uploaded_dataset_vanished_fails_naming_it_instead_of_retrying(
    client: TestClient, db_session: Session, deps: StudyDeps, record_epochs
) -> None:
    # The API refuses the delete while the study runs (above); a row removed behind its back (an operator,
    # a restored backup) must still end the study with the reason, not leave it to every sweep.
    dataset = client.post("/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    body = {"search": {"dataset": {"id": dataset["id"]}, "training": {"epochs": 2}}, "seeds": [0],
            "random_baseline": 2}  # fmt: skip
    study = create(client, body)
    record_epochs(study["stages"]["search"][0]["id"], 2, status="succeeded")
    db_session.execute(delete(Dataset).where(Dataset.id == dataset["id"]))
    db_session.commit()
    for _ in range(2):  # the second sweep finds it ended
        advance_study(db_session, study["id"], deps)
    after = client.get(f"/studies/{study['id']}").json()
    assert after["status"] == "failed", after
    assert "could not be created" in after["error"] and dataset["id"] in after["error"]
    assert trainings_of(db_session, _study(db_session, study["id"]), "selecting") == []


@pytest.mark.parametrize("section", ["selection", "final"])
def test_an_upload_named_only_by_a_studys_later_stage_stays_while_the_study_runs(
    client: TestClient, section: str
) -> None:
    dataset = client.post("/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    body = {**STUDY, "seeds": [0], section: {"dataset": {"id": dataset["id"]}, "training": {"epochs": 1}}}
    study = create(client, body)  # its search runs on digits: no search or training loads the upload yet
    response = client.delete(f"/datasets/{dataset['id']}")
    assert response.status_code == 409 and f"used by study {study['id']!r}" in response.json()["detail"]
    assert client.post(f"/studies/{study['id']}/cancel").status_code == 202
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204


def test_an_upload_stays_while_a_training_of_a_given_genotype_loads_it(client: TestClient) -> None:
    dataset = client.post("/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    body = {
        "genotype": DARTS_V2.to_json(),
        "dataset": {"id": dataset["id"]},
        "network": {"cells": 3, "init_channels": 4},
        "training": {"epochs": 1},
    }
    created = client.post("/trainings", json=body)
    assert created.status_code == 201, created.text
    response = client.delete(f"/datasets/{dataset['id']}")
    assert response.status_code == 409 and "a search or a training" in response.json()["detail"]
    assert client.post(f"/trainings/{created.json()['id']}/cancel").status_code == 202
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
