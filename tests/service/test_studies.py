"""`/studies`: create (every child's spec validated first), read with stages, list, owners, events,
cancel, delete. The children run on no worker here: their statuses are set through the projection."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.main import create_app
from app.models import Search
from app.settings import Settings
from darts_core.client.sse import iter_sse

STUDY = {
    "search": {"dataset": {"name": "digits"}, "training": {"epochs": 2}},
    "seeds": [0, 1],
    "selection": {"training": {"epochs": 1}},
}


def create(client: TestClient, body: dict | None = None) -> dict:
    response = client.post("/studies", json=body or STUDY)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_queues_one_search_per_seed_and_shows_the_stages(
    client: TestClient, db_session: Session
) -> None:
    response = client.post("/studies", json=STUDY)
    assert response.status_code == 201, response.text
    study = response.json()
    assert response.headers["location"] == f"/studies/{study['id']}"
    assert (study["status"], study["stage"], study["name"]) == ("queued", "searching", "digits search study")
    assert study["spec"]["min_successful_seeds"] == 2
    assert study["spec"]["selection"]["training"]["epochs"] == 1
    assert study["spec"]["selection"]["network"]["cells"] == 5  # defaults filled in
    assert study["spec"]["final"] is None
    children = study["stages"]["search"]
    assert [(c["kind"], c["seed"], c["status"]) for c in children] == [
        ("search", 0, "queued"), ("search", 1, "queued")
    ]
    assert study["stages"]["selection"] == [] and study["stages"]["final"] is None
    rows = list(db_session.scalars(select(Search).where(Search.study_id == study["id"])))
    assert sorted(row.spec["training"]["seed"] for row in rows) == [0, 1]
    assert client.get(f"/studies/{study['id']}").json()["stages"]["search"] == children


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"selection": {"training": {"epochs": 0}}}, ["body", "selection", "training", "epochs"]),
        ({"final": {"network": {"cells": 0}}}, ["body", "final", "network", "cells"]),
        ({"selection": {"training": {"valid_fraction": False}}},
         ["body", "selection", "training", "valid_fraction"]),
        # Selection picks by validation accuracy: without a validation split it would pick blind.
        ({"selection": {"training": {"valid_fraction": 0.0}}},
         ["body", "selection", "training", "valid_fraction"]),
        ({"search": {"dataset": {"name": "digits"}, "training": {"epochs": 0}}},
         ["body", "search", "training", "epochs"]),
        ({"seeds": [1, 1]}, ["body", "seeds"]),
        ({"seeds": []}, ["body", "seeds"]),
        ({"seeds": list(range(17))}, ["body", "seeds"]),
        ({"seeds": [-1]}, ["body", "seeds", 0]),
        ({"min_successful_seeds": 3}, ["body", "min_successful_seeds"]),
        ({"selection": {"genotype": "DARTS_V2"}}, ["body", "selection", "genotype"]),
    ],
)
def test_invalid_children_are_refused_before_anything_is_created(
    client: TestClient, db_session: Session, change: dict, loc: list
) -> None:
    response = client.post("/studies", json={**STUDY, **change})
    assert response.status_code == 422, response.text
    assert loc in [issue["loc"] for issue in response.json()["detail"]]
    assert client.get("/studies").json()["items"] == []
    assert db_session.scalar(select(Search.id)) is None


def test_a_search_that_does_not_fit_a_worker_is_refused_naming_the_search(client: TestClient) -> None:
    big = {"dataset": {"name": "digits"}, "training": {"batch_size": 4096}, "network": {"init_channels": 512}}
    response = client.post("/studies", json={**STUDY, "search": big})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["body", "search"]
    assert response.json()["detail"][0]["type"] == "does_not_fit"


def test_the_seeds_count_against_the_quota_of_active_searches(
    api_settings: Settings, auth_headers: dict[str, str]
) -> None:
    settings = api_settings.model_copy(update={"max_active_searches_per_owner": 3})
    with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as client:
        assert client.post("/studies", json=STUDY).status_code == 201
        response = client.post("/studies", json=STUDY)
        assert response.status_code == 429, response.text
        assert "MAX_ACTIVE_SEARCHES_PER_OWNER" in response.json()["detail"]
        assert response.headers["retry-after"]
        assert len(client.get("/studies").json()["items"]) == 1


def test_other_owners_see_none_of_it(client: TestClient, make_key) -> None:
    study = create(client)
    _name, key = make_key()
    other = {"Authorization": f"Bearer {key}"}
    for method, path in [("GET", ""), ("GET", "/events"), ("POST", "/cancel"), ("DELETE", "")]:
        response = client.request(method, f"/studies/{study['id']}{path}", headers=other)
        assert response.status_code == 404, (method, path)
    assert client.get("/studies", headers=other).json()["items"] == []
    assert [item["id"] for item in client.get("/studies").json()["items"]] == [study["id"]]


def test_cancel_cancels_the_queued_searches_then_delete_removes_them(
    client: TestClient, db_session: Session
) -> None:
    study = create(client)
    assert client.delete(f"/studies/{study['id']}").status_code == 409  # still running
    response = client.post(f"/studies/{study['id']}/cancel")
    assert response.status_code == 202, response.text
    cancelled = response.json()
    assert (cancelled["status"], cancelled["stage"]) == ("cancelled", "done")
    assert {c["status"] for c in cancelled["stages"]["search"]} == {"cancelled"}
    assert client.post(f"/studies/{study['id']}/cancel").status_code == 202  # idempotent
    assert client.get("/studies?status=cancelled").json()["items"][0]["id"] == study["id"]

    assert client.delete(f"/studies/{study['id']}").status_code == 204
    assert client.get(f"/studies/{study['id']}").status_code == 404
    db_session.expire_all()
    assert db_session.scalar(select(Search.id).where(Search.study_id == study["id"])) is None


def test_events_follow_the_study_to_its_end(client: TestClient, record_epochs, set_status) -> None:
    client.app.state.sse_poll_seconds = 0.05
    study = create(client, {**STUDY, "seeds": [5]})
    search_id = study["stages"]["search"][0]["id"]
    record_epochs(search_id, 2)
    set_status(search_id, "failed", error="boom")
    client.post(f"/studies/{study['id']}/cancel")  # any terminal status ends the stream
    with client.stream("GET", f"/studies/{study['id']}/events") as response:
        assert response.status_code == 200
        events = [(event.event, event.json()) for event in iter_sse(response.iter_lines())]
    epochs = [data for kind, data in events if kind == "epoch"]
    assert [(e["seed"], e["record"]["epoch"]) for e in epochs] == [(5, 1), (5, 2)]
    assert [data["status"] for kind, data in events if kind == "child"] == ["failed"]
    assert events[-1][0] == "study" and events[-1][1]["status"] in ("failed", "cancelled")


@pytest.mark.parametrize("field", ["selection", "final"])
def test_a_training_time_limit_above_the_service_s_is_refused_up_front(
    client: TestClient, db_session: Session, field: str
) -> None:
    """Checked before anything is created, as for the search: not stages later, failing the study."""
    client.app.state.settings = client.app.state.settings.model_copy(update={"search_time_limit": 600})
    body = {**STUDY, field: {"training": {"epochs": 1}, "resources": {"time_limit_seconds": 601}}}
    response = client.post("/studies", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["detail"][0]
    assert error["loc"] == ["body", field, "resources", "time_limit_seconds"]
    assert "SEARCH_TIME_LIMIT" in error["msg"]
    assert client.get("/studies").json()["items"] == []
    assert db_session.scalar(select(Search.id)) is None
    body[field]["resources"]["time_limit_seconds"] = 60
    assert client.post("/studies", json=body).status_code == 201


def test_two_studies_at_once_never_both_exceed_the_quota(
    api_settings: Settings, auth_headers: dict[str, str], api_owner: str, db_session: Session,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both requests pass the first count; the other's searches appear before this one creates its own:
    the count after creating them refuses this study, cancels its searches and removes it."""
    from app.services import studies as study_service

    real_advance = study_service.advance_study
    others: list[Search] = []

    def concurrent_request_first(session: Session, study_id: str, deps) -> object:
        if not others:  # the other request's searches land in between
            others.extend(
                Search(id=str(uuid.uuid4()), name="other", owner=api_owner, status="queued",
                       spec=STUDY["search"], dataset_ref="builtin:digits", epochs=2)
                for _ in range(2)
            )
            session.add_all(others)
            session.commit()
        return real_advance(session, study_id, deps)

    monkeypatch.setattr(study_service, "advance_study", concurrent_request_first)
    settings = api_settings.model_copy(update={"max_active_searches_per_owner": 3})
    with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as client:
        response = client.post("/studies", json=STUDY)
        assert response.status_code == 429, response.text
        assert "MAX_ACTIVE_SEARCHES_PER_OWNER" in response.json()["detail"]
        assert client.get("/studies").json()["items"] == []
    db_session.expire_all()
    # Its searches were cancelled (still queued) and removed with it; the other request's stay.
    assert db_session.scalar(select(Search.id).where(Search.study_id.is_not(None))) is None
    assert len(list(db_session.scalars(select(Search.id)))) == 2


def test_methods_and_the_random_baseline_are_validated_naming_the_field(client: TestClient) -> None:
    base = {"search": {"dataset": {"name": "digits"}}, "seeds": [0]}
    for body, field in (
        ({**base, "random_baseline": -1}, ["body", "random_baseline"]),
        ({**base, "random_baseline": 33}, ["body", "random_baseline"]),
        ({**base, "random_baseline": "2"}, ["body", "random_baseline"]),
        ({**base, "methods": []}, ["body", "methods"]),
        ({**base, "methods": [{"name": "darts"}] * 17}, ["body", "methods"]),
        ({**base, "methods": [{"name": "darts"}, {"name": "no-such-method"}]}, ["body", "methods", 1]),
        ({**base, "methods": [{"name": "gdas", "tau_min": -1.0}]}, ["body", "methods", 0, "gdas", "tau_min"]),
    ):
        response = client.post("/studies", json=body)
        assert response.status_code == 422, body
        assert response.json()["detail"][0]["loc"] == field, response.json()
    # A method that does not compose with the search (GDAS samples one operation: no second order).
    second_order = {**base, "search": {"dataset": {"name": "digits"}, "training": {"order": "second"}}}
    refused = client.post("/studies", json={**second_order, "methods": [{"name": "darts"}, {"name": "gdas"}]})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["loc"][:3] == ["body", "methods", 1], refused.json()
    assert "training.order" in refused.json()["detail"][0]["msg"]
    # A budget only the cheapest genotypes meet: the searches can keep it, a uniform draw cannot.
    from darts_core.search.budget import cost_table_for
    from darts_core.spec.search_spec import SearchConfig

    network = {"cells": 3, "init_channels": 8}
    table = cost_table_for(SearchConfig.from_spec({"constraints": {"max_parameters": 1, "network": network}}),
                           (1, 8, 8), 10)
    cheapest = int(table.cost(table.cheapest())[0])
    tight = {"dataset": {"name": "digits"}, "constraints": {"max_parameters": cheapest, "network": network}}
    refused = client.post("/studies", json={**base, "search": tight, "random_baseline": 2})
    assert refused.status_code == 422, refused.text
    assert refused.json()["detail"][0]["loc"] == ["body", "random_baseline"]
    assert "within the search's constraints" in refused.json()["detail"][0]["msg"]
    assert client.get("/studies").json()["items"] == []  # nothing was created


def test_a_study_of_two_methods_runs_a_search_per_method_and_seed(client: TestClient) -> None:
    body = {"search": {"dataset": {"name": "digits"}, "training": {"epochs": 2}}, "seeds": [0, 1],
            "methods": [{"name": "darts"}, {"name": "gdas"}], "random_baseline": 2}
    created = client.post("/studies", json=body)
    assert created.status_code == 201, created.text
    study = created.json()
    searches = study["stages"]["search"]
    assert [(child["arm"], child["seed"]) for child in searches] == [("0", 0), ("0", 1), ("1", 0), ("1", 1)]
    for child in searches:
        spec = client.get(f"/searches/{child['id']}").json()["spec"]
        assert spec["method"]["name"] == ("darts" if child["arm"] == "0" else "gdas")
        assert spec["training"]["seed"] == child["seed"]
    assert [(row["method"], row["runs"], row["succeeded"]) for row in study["comparison"]] == [
        ("darts", 2, 0), ("gdas", 2, 0), ("random", 2, 0)
    ]
