"""Liveness, readiness, metrics, the web page, OpenAPI and the migrations' agreement with the models."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import inspect, text

from app.db import alembic_config, make_engine, run_migrations, with_search_path
from app.main import create_app
from app.settings import Settings

# Nothing listens on port 1: connections are refused at once.
DEAD_REDIS_URL = "redis://127.0.0.1:1/0"
DEAD_DATABASE_URL = "postgresql://postgres@127.0.0.1:1/test?connect_timeout=2"


def test_healthz(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_when_database_and_redis_answer(client: TestClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"] == {"database": "ok", "redis": "ok"}


def test_readyz_names_redis_when_it_is_down(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"redis_url": DEAD_REDIS_URL})
    with TestClient(create_app(settings, run_ingester=False)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["detail"] == "not ready: redis unreachable"
    assert body["checks"]["database"] == "ok"
    # The failing dependency is named, and nothing more: no exception text, no address or socket path.
    assert body["checks"] == {"database": "ok", "redis": "unreachable"}
    assert "127.0.0.1" not in response.text and "Error" not in response.text


def test_readyz_names_the_database_when_it_is_down(service_settings: Settings) -> None:
    settings = service_settings.model_copy(update={"database_url": DEAD_DATABASE_URL})
    with TestClient(create_app(settings, run_ingester=False)) as client:
        response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"] == "not ready: database unreachable"
    assert response.json()["checks"]["redis"] == "ok"


def _queue_depth(client: TestClient, queue: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == "darts_queue_depth" and sample.labels == {"queue": queue}:
                return sample.value
    raise AssertionError("no darts_queue_depth sample for " + queue)


def test_metrics_count_requests_by_route_template_and_searches_by_status(
    client: TestClient, api_settings: Settings
) -> None:
    # No worker consumes the API tests' queue: the search stays in it.
    depth = _queue_depth(client, api_settings.celery_queue)
    assert client.post("/searches", json={"dataset": {"name": "digits"}}).status_code == 201
    assert _queue_depth(client, api_settings.celery_queue) == depth + 1
    client.get("/healthz")
    client.get("/searches/does-not-exist")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'darts_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    # The route template, not the raw path, labels the request.
    assert 'darts_http_requests_total{method="GET",route="/searches/{search_id}",status="404"} 1.0' in text
    assert "darts_http_request_duration_seconds_bucket" in text
    assert 'darts_http_requests_total{method="POST",route="/searches",status="201"} 1.0' in text
    assert 'darts_searches{status="queued"} 1.0' in text
    assert 'darts_searches{status="running"} 0.0' in text
    assert 'darts_trainings{status="queued"} 0.0' in text
    assert "process_cpu_seconds_total" in text  # the process-wide registry is served too


def test_the_page_is_served(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/web/js/main.js"></script>' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # Every module the page imports is served (a missing one would be a console error).
    pending, seen = ["main.js"], set()
    while pending:
        name = pending.pop()
        seen.add(name)
        script = client.get(f"/web/js/{name}")
        assert script.status_code == 200, name
        imported = re.findall(r'from "\./([\w-]+\.js)"', script.text)
        pending += [found for found in imported if found not in seen]
    assert {"api.js", "search.js", "form.js", "list.js", "charts.js"} <= seen


def test_openapi_lists_the_rest_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/searches",
        "/searches/{search_id}",
        "/searches/{search_id}/genotype",
        "/searches/{search_id}/genotype.svg",
        "/searches/{search_id}/epochs",
        "/searches/{search_id}/events",
        "/searches/{search_id}/cancel",
        "/datasets",
        "/datasets/{dataset_id}",
        "/healthz",
        "/readyz",
        "/metrics",
    ):
        assert path in paths, path
    assert client.get("/docs").status_code == 200


def test_migrations_match_the_models(service_settings: Settings) -> None:
    """`alembic check`: the migrated database has exactly the tables, columns and indices of app.models."""
    command.check(alembic_config(service_settings))


@pytest.fixture
def empty_database(
    service_settings: Settings, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """Settings of a second, empty database on the current backend (its own schema on PostgreSQL)."""
    if service_settings.sqlalchemy_url.startswith("sqlite"):
        yield service_settings.model_copy(update={"database_url": f"sqlite:///{tmp_path / 'empty.db'}"})
        return
    import psycopg

    POSTGRES_URL = request.getfixturevalue("postgres_server_url")  # noqa: N806
    schema = f"darts_test_empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
        connection.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield service_settings.model_copy(update={"database_url": with_search_path(POSTGRES_URL, schema)})
    finally:
        with psycopg.connect(POSTGRES_URL, autocommit=True) as connection:
            connection.execute(f'DROP SCHEMA "{schema}" CASCADE')


def test_migrations_build_everything_on_an_empty_database_and_downgrade_to_nothing(
    empty_database: Settings,
) -> None:
    engine = make_engine(empty_database)
    try:
        assert inspect(engine).get_table_names() == []
        run_migrations(empty_database)
        tables = set(inspect(engine).get_table_names())
        assert tables == {
            "alembic_version", "searches", "search_epochs", "datasets", "api_keys",
            "trainings", "training_epochs", "studies",
        }
        indexes = {index["name"] for index in inspect(engine).get_indexes("searches")}
        assert {"ix_searches_created_at_id", "ix_searches_status_created_at_id"} <= indexes
        command.check(alembic_config(empty_database))
        run_migrations(empty_database)  # already at head: nothing to do
        command.downgrade(alembic_config(empty_database), "base")
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    finally:
        engine.dispose()


def test_rows_made_before_keys_belong_to_the_admin_owner(empty_database: Settings) -> None:
    """0002 gives the searches and datasets of a database made before keys the owner `admin` (the name of
    the admin key `darts-service up` creates first)."""
    engine = make_engine(empty_database)
    try:
        run_migrations(empty_database, "0001")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO searches (id, name, status, spec, dataset_ref, created_at, epochs) "
                    "VALUES ('s1', 'old', 'succeeded', '{}', 'builtin:digits', CURRENT_TIMESTAMP, 1)"
                )
            )
        run_migrations(empty_database)
        with engine.connect() as connection:
            assert connection.execute(text("SELECT owner FROM searches")).scalars().all() == ["admin"]
        command.check(alembic_config(empty_database))
    finally:
        engine.dispose()


def test_readyz_counts_the_workers_consuming_and_says_when_there_is_none(service_settings: Settings) -> None:
    import redis

    from app.worker_heartbeat import heartbeat_key
    from worker.health import WORKER_KEY_TTL_SECONDS

    # A prefix of its own: no worker of another test is counted.
    settings = service_settings.model_copy(update={"redis_prefix": f"{service_settings.redis_prefix}-hb"})
    key = heartbeat_key(settings.redis_prefix, "darts-test@host")
    client_redis = redis.Redis.from_url(settings.redis_url or "")
    with TestClient(create_app(settings, run_ingester=False)) as client:
        idle = client.get("/readyz")
        assert idle.status_code == 200  # the API still takes searches; they wait in the queue
        assert idle.json()["workers"]["consuming"] == 0
        assert idle.json()["workers"]["detail"].startswith("no worker consuming")
        try:
            # What a live worker's liveness thread (worker/health.py) writes.
            client_redis.set(key, "1", ex=WORKER_KEY_TTL_SECONDS)
            ready = client.get("/readyz").json()["workers"]
            assert ready == {"consuming": 1, "detail": "ok"}
        finally:
            client_redis.delete(key)
            client_redis.close()
        assert client.get("/readyz").json()["workers"]["consuming"] == 0


def test_a_heartbeat_names_the_workers_device_and_anything_else_reads_as_unknown() -> None:
    import dataclasses

    from app.worker_heartbeat import WorkerDevice, decode_heartbeat, encode_heartbeat
    from worker.health import probe_device

    gpu = WorkerDevice("w@h", "cuda", "NVIDIA H100 80GB HBM3", 85_000_000_000)
    assert decode_heartbeat("w@h", encode_heartbeat(12.5, gpu)) == dataclasses.replace(gpu, at=12.5)
    for value in (None, "[]", '{"device": "tpu"}', "{"):
        assert decode_heartbeat("w@h", value) == WorkerDevice("w@h", "unknown")
    # A worker from before devices wrote the time alone: unknown device, its time kept (/metrics).
    for value, at in (("1", 1.0), ("1700000000.000", 1700000000.0)):
        assert decode_heartbeat("w@h", value) == WorkerDevice("w@h", "unknown", at=at)
    bad_memory = decode_heartbeat("w@h", '{"device": "cuda", "memory_bytes": true, "name": 3}')
    assert bad_memory == WorkerDevice("w@h", "cuda", None, None)
    # This machine has no GPU: the probe (a child interpreter importing torch) says so.
    assert probe_device("w@h") == WorkerDevice("w@h", "cpu")
