"""Who may do what: API keys on every route, owners of searches and datasets, admins, quotas."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.routing import iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from starlette.routing import Mount

from app.models import ApiKey, Dataset
from app.services import keys as key_service
from app.settings import Settings

DIGITS = {"dataset": {"name": "digits"}, "training": {"epochs": 2}}
PUBLIC_PATHS = {"/healthz", "/readyz", "/"}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def npz_bytes(samples: int = 8) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, size=(samples, 1, 8, 8), dtype=np.uint8)
    np.savez(buffer, x=x, y=np.arange(samples) % 2)
    return buffer.getvalue()


@pytest.fixture
def anonymous(app_client) -> TestClient:
    return app_client()


def _concrete(path: str) -> str:
    # Any value for a path parameter: the key is checked before anything is looked up.
    for name in ("search_id", "training_id", "dataset_id", "study_id"):
        path = path.replace("{" + name + "}", "00000000-0000-4000-8000-000000000000")
    assert "{" not in path, f"a path parameter this test does not know: {path}"
    return path


def protected_routes(app) -> list[tuple[str, str]]:
    """(method, path) of every route of the app but the public ones (the static files' mount aside).

    FastAPI keeps included routers as such in `app.routes`; `iter_route_contexts` gives their routes.
    """
    routes = []
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, Mount):
            assert route.path == "/web", f"an unexpected mount {route.path}: is it protected?"
            continue
        if route.path in PUBLIC_PATHS:
            continue
        for method in sorted(set(route.methods) - {"HEAD"}):
            routes.append((method, route.path))
    return routes


def test_every_route_but_health_and_the_page_needs_a_key(anonymous: TestClient, make_key) -> None:
    routes = protected_routes(anonymous.app)
    paths = {path for _method, path in routes}
    # The list is built from app.routes, so a route added later is checked too; these must be in it.
    assert {"/searches", "/searches/{search_id}/events", "/datasets/{dataset_id}", "/metrics"} <= paths
    assert {"/trainings", "/trainings/{training_id}", "/trainings/{training_id}/epochs",
            "/trainings/{training_id}/events", "/trainings/{training_id}/weights",
            "/trainings/{training_id}/cancel"} <= paths
    assert ("DELETE", "/trainings/{training_id}") in routes
    assert {"/docs", "/redoc", "/openapi.json"} <= paths
    assert ("DELETE", "/datasets/{dataset_id}") in routes
    assert {"/studies", "/studies/{study_id}/events", "/studies/{study_id}/cancel"} <= paths
    for method, path in routes:
        for headers, challenge in (
            ({}, "Bearer"),
            (bearer("dsk_not-a-key-of-this-service"), 'Bearer error="invalid_token"'),
            ({"Authorization": "Basic dXNlcjpwYXNz"}, "Bearer"),
        ):
            response = anonymous.request(method, _concrete(path), headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"] == challenge, (method, path)
            assert "API key" in response.json()["detail"]
    for path in PUBLIC_PATHS:
        assert anonymous.get(path).status_code == 200, path
    # Every protected API route documents its 401.
    schema = anonymous.get("/openapi.json", headers=bearer(make_key()[1])).json()
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if path not in PUBLIC_PATHS:
                assert "401" in operation["responses"], (method, path)


def test_a_revoked_key_is_refused_and_use_is_recorded(
    anonymous: TestClient, make_key, session_factory: sessionmaker[Session]
) -> None:
    name, key = make_key()
    assert anonymous.get("/searches", headers=bearer(key)).status_code == 200
    deadline = time.monotonic() + 10  # the use is written by a thread of its own
    while True:
        with session_factory() as session:
            row = session.query(ApiKey).filter_by(name=name).one()
            if row.last_used_at is not None or time.monotonic() > deadline:
                break
        time.sleep(0.05)
    assert row.last_used_at is not None and row.key_hash != key and key not in row.key_hash
    with session_factory() as session:
        key_service.revoke_key(session, name)
    # The key cache is off here (api_settings); test_read_cache.py covers a revocation while it is on.
    response = anonymous.get("/searches", headers=bearer(key))
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'


def test_metrics_and_docs_open_only_when_a_setting_says_so(app_client) -> None:
    closed = app_client()
    opened = app_client(metrics_public=True, docs_public=True)
    for path in ("/metrics", "/docs", "/redoc", "/openapi.json"):
        assert closed.get(path).status_code == 401, path
        assert opened.get(path).status_code == 200, path
    assert opened.get("/searches").status_code == 401


def test_no_auth_acts_as_the_local_admin(app_client) -> None:
    open_client = app_client(no_auth=True)
    created = open_client.post("/searches", json=DIGITS)
    assert created.status_code == 201, created.text
    assert created.json()["owner"] == "local"
    assert open_client.get("/metrics").status_code == 200


# ------------------------------------------------------------------------------------------ owners


def test_another_owner_gets_404_and_never_sees_them_in_lists(
    anonymous: TestClient, make_key, tmp_path: Path
) -> None:
    ana_name, ana = make_key()
    _bob_name, bob = make_key()
    search = anonymous.post("/searches", json=DIGITS, headers=bearer(ana)).json()
    assert search["owner"] == ana_name
    upload = anonymous.post("/datasets", files={"file": ("mine.npz", npz_bytes())}, headers=bearer(ana))
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    assert dataset["owner"] == ana_name

    search_paths = ["", "/genotype", "/genotype.svg", "/epochs", "/events"]
    for suffix in search_paths:
        response = anonymous.get(f"/searches/{search['id']}{suffix}", headers=bearer(bob))
        assert response.status_code == 404, (suffix, response.text)
        assert response.json()["detail"] == f"search {search['id']!r} not found"
    assert anonymous.post(f"/searches/{search['id']}/cancel", headers=bearer(bob)).status_code == 404
    assert anonymous.delete(f"/searches/{search['id']}", headers=bearer(bob)).status_code == 404
    assert anonymous.get(f"/datasets/{dataset['id']}", headers=bearer(bob)).status_code == 404
    assert anonymous.delete(f"/datasets/{dataset['id']}", headers=bearer(bob)).status_code == 404
    assert anonymous.get("/searches", headers=bearer(bob)).json()["items"] == []
    bob_datasets = anonymous.get("/datasets", headers=bearer(bob)).json()["items"]
    assert [item["kind"] for item in bob_datasets] == ["builtin"] * len(bob_datasets)
    # ... nor by asking for them by owner.
    assert anonymous.get("/searches", params={"owner": ana_name}, headers=bearer(bob)).json()["items"] == []

    # Nothing bob tried changed them: ana still sees both, the search still queued.
    assert anonymous.get(f"/searches/{search['id']}", headers=bearer(ana)).json()["status"] == "queued"
    assert [item["id"] for item in anonymous.get("/searches", headers=bearer(ana)).json()["items"]] == [
        search["id"]
    ]
    assert anonymous.get(f"/datasets/{dataset['id']}", headers=bearer(ana)).status_code == 200
    # The built-ins are everyone's.
    assert anonymous.get("/datasets/digits", headers=bearer(bob)).status_code == 200


def test_an_admin_sees_every_owner_and_filters_by_owner(anonymous: TestClient, make_key) -> None:
    ana_name, ana = make_key()
    bob_name, bob = make_key()
    _admin_name, admin = make_key(admin=True)
    ana_search = anonymous.post("/searches", json=DIGITS, headers=bearer(ana)).json()
    bob_search = anonymous.post("/searches", json=DIGITS, headers=bearer(bob)).json()
    bob_dataset = anonymous.post(
        "/datasets", files={"file": ("b.npz", npz_bytes())}, headers=bearer(bob)
    ).json()

    everyone = anonymous.get("/searches", headers=bearer(admin)).json()["items"]
    assert [item["id"] for item in everyone] == [bob_search["id"], ana_search["id"]]
    only_ana = anonymous.get("/searches", params={"owner": ana_name}, headers=bearer(admin)).json()["items"]
    assert [item["id"] for item in only_ana] == [ana_search["id"]]
    assert anonymous.get(f"/searches/{bob_search['id']}", headers=bearer(admin)).status_code == 200
    uploads = anonymous.get("/datasets", params={"owner": bob_name}, headers=bearer(admin)).json()["items"]
    assert [item["id"] for item in uploads if item["kind"] == "upload"] == [bob_dataset["id"]]
    uploads = anonymous.get("/datasets", params={"owner": ana_name}, headers=bearer(admin)).json()["items"]
    assert [item for item in uploads if item["kind"] == "upload"] == []
    # An admin may cancel anyone's search.
    cancelled = anonymous.post(f"/searches/{ana_search['id']}/cancel", headers=bearer(admin))
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"


def test_a_search_can_use_only_its_owner_s_datasets(anonymous: TestClient, make_key) -> None:
    _ana_name, ana = make_key()
    _bob_name, bob = make_key()
    dataset = anonymous.post("/datasets", files={"file": ("a.npz", npz_bytes())}, headers=bearer(ana)).json()
    spec = {"dataset": {"id": dataset["id"]}, "training": {"epochs": 1}}

    refused = anonymous.post("/searches", json=spec, headers=bearer(bob))
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["loc"] == ["body", "dataset", "id"] and dataset["id"] in error["msg"]
    assert anonymous.get("/searches", headers=bearer(bob)).json()["items"] == []
    assert anonymous.post("/searches", json=spec, headers=bearer(ana)).status_code == 201


# ------------------------------------------------------------------------------------------ quotas


def test_active_searches_per_owner_are_capped_with_429_and_retry_after(app_client, make_key) -> None:
    api = app_client(max_active_searches_per_owner=2)
    _ana_name, ana = make_key()
    _bob_name, bob = make_key()
    first, second = (api.post("/searches", json=DIGITS, headers=bearer(ana)).json() for _ in range(2))
    refused = api.post("/searches", json=DIGITS, headers=bearer(ana))
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) > 0
    assert "MAX_ACTIVE_SEARCHES_PER_OWNER" in refused.json()["detail"]
    assert len(api.get("/searches", headers=bearer(ana)).json()["items"]) == 2  # nothing kept
    # Another owner has a quota of its own.
    assert api.post("/searches", json=DIGITS, headers=bearer(bob)).status_code == 201
    # A finished (here: cancelled) search no longer counts.
    assert api.post(f"/searches/{first['id']}/cancel", headers=bearer(ana)).json()["status"] == "cancelled"
    assert api.post("/searches", json=DIGITS, headers=bearer(ana)).status_code == 201
    assert second["status"] == "queued"


def test_dataset_bytes_per_owner_are_capped_with_413(app_client, make_key, api_settings: Settings) -> None:
    one = npz_bytes(16)
    api = app_client(max_dataset_bytes_per_owner=len(one) + len(one) // 2)
    _ana_name, ana = make_key()
    _bob_name, bob = make_key()
    kept = api.post("/datasets", files={"file": ("one.npz", one)}, headers=bearer(ana))
    assert kept.status_code == 201, kept.text
    files_before = sorted((api_settings.artifacts_path / "datasets").iterdir())

    refused = api.post("/datasets", files={"file": ("two.npz", one)}, headers=bearer(ana))
    assert refused.status_code == 413, refused.text
    assert "MAX_DATASET_BYTES_PER_OWNER" in refused.json()["detail"]
    raw = api.post(
        "/datasets?filename=two.npz",
        content=one,
        headers={**bearer(ana), "Content-Type": "application/octet-stream"},
    )
    assert raw.status_code == 413
    assert sorted((api_settings.artifacts_path / "datasets").iterdir()) == files_before
    assert api.post("/datasets", files={"file": ("b.npz", one)}, headers=bearer(bob)).status_code == 201
    # Deleting frees the owner's storage.
    assert api.delete(f"/datasets/{kept.json()['id']}", headers=bearer(ana)).status_code == 204
    assert api.post("/datasets", files={"file": ("two.npz", one)}, headers=bearer(ana)).status_code == 201


def test_delete_dataset_frees_its_file_but_not_while_a_search_uses_it(
    client: TestClient, db_session: Session
) -> None:
    dataset = client.post("/datasets", files={"file": ("d.npz", npz_bytes())}).json()
    path = Path(db_session.get(Dataset, dataset["id"]).path)
    assert path.exists()
    search = client.post(
        "/searches", json={"dataset": {"id": dataset["id"]}, "training": {"epochs": 1}}
    ).json()

    busy = client.delete(f"/datasets/{dataset['id']}")
    assert busy.status_code == 409 and "not finished" in busy.json()["detail"]
    assert path.exists() and client.get(f"/datasets/{dataset['id']}").status_code == 200

    assert client.post(f"/searches/{search['id']}/cancel").json()["status"] == "cancelled"
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 204
    assert not path.exists()
    assert client.get(f"/datasets/{dataset['id']}").status_code == 404
    assert client.delete(f"/datasets/{dataset['id']}").status_code == 404
    assert client.delete("/datasets/digits").status_code == 409


def test_openapi_documents_the_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert json.dumps(schema["paths"]["/datasets/{dataset_id}"]["delete"]["responses"]).count("204") == 1
