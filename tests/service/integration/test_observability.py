"""What an operator sees of a real search: `/metrics` (each family scraped and checked) and the log
lines of the worker and the ingester (JSON, with the search id and the attempt)."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.settings import Settings

from .conftest import WorkerProcess, submit, tiny_spec, wait_for_status, wait_until


def scrape(api: TestClient) -> dict[str, list[Any]]:
    """`/metrics` parsed: family name -> its samples."""
    response = api.get("/metrics")
    assert response.status_code == 200
    return {family.name: family.samples for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, list[Any]], sample: str, **labels: str) -> float | None:
    for name in families:
        for candidate in families[name]:
            if candidate.name == sample and all(candidate.labels.get(k) == v for k, v in labels.items()):
                return candidate.value
    return None


@pytest.fixture(scope="module")
def finished_search(api: TestClient, worker: WorkerProcess) -> dict[str, Any]:
    worker.ensure_running()
    search = submit(api, tiny_spec(epochs=2, name="observed"))
    finished = wait_for_status(api, search["id"], {"succeeded", "failed", "cancelled"})
    assert finished["status"] == "succeeded", finished["error"]
    return finished


def test_metrics_has_every_family_an_operator_needs(
    api: TestClient, finished_search: dict[str, Any], stack_settings: Settings
) -> None:
    client = redis.Redis.from_url(stack_settings.redis_url)
    try:
        # A malformed entry on the stream: counted (and acked) by the ingester.
        before = value(scrape(api), "darts_ingester_events_total", type="unknown", outcome="malformed")
        entry = client.xadd(stack_settings.events_stream, {"data": "not json"})
        try:
            wait_until(
                lambda: value(scrape(api), "darts_ingester_events_total", type="unknown", outcome="malformed")
                > before,
                60,
                "the malformed entry to be counted",
                0.2,
            )
        finally:
            # Other tests read the stream themselves: leave it as they expect it.
            client.xdel(stack_settings.events_stream, entry)
    finally:
        client.close()
    api.get(f"/searches/{finished_search['id']}")
    families = scrape(api)

    # Searches by status (counted in SQL at scrape time).
    assert value(families, "darts_searches", status="succeeded") >= 1
    # Queue depth of the searches queue (nothing waits: the worker took it).
    assert value(families, "darts_queue_depth", queue=stack_settings.celery_queue) == 0
    # Epoch durations and ingestion lag, observed as the ingester stored the two epochs.
    assert value(families, "darts_epoch_duration_seconds_count") >= 2
    assert value(families, "darts_epoch_duration_seconds_sum") > 0
    assert value(families, "darts_ingestion_lag_seconds_count") >= 2
    # Events ingested, malformed, dead-lettered (every series exists, at 0 until it happens).
    assert value(families, "darts_ingester_events_total", type="epoch", outcome="stored") >= 2
    assert value(families, "darts_ingester_events_total", type="status", outcome="stored") >= 2
    assert value(families, "darts_ingester_events_total", type="unknown", outcome="malformed") >= 1
    assert value(families, "darts_ingester_events_total", type="epoch", outcome="dead_lettered") is not None
    # HTTP latency by route template and method: the template, never the id.
    assert value(families, "darts_http_request_duration_seconds_count",
                 method="GET", route="/searches/{search_id}") >= 1
    routes = {sample.labels.get("route") for sample in families["darts_http_request_duration_seconds"]}
    assert finished_search["id"] not in " ".join(filter(None, routes))
    # Worker heartbeats: the running worker is there, with a recent timestamp.
    beats = [s for s in families["darts_worker_heartbeat_timestamp_seconds"]
             if s.name == "darts_worker_heartbeat_timestamp_seconds"]
    assert beats and all(abs(time.time() - beat.value) < 60 for beat in beats)
    assert value(families, "darts_workers") >= 1


def test_worker_lines_are_json_with_search_id_and_attempt(
    finished_search: dict[str, Any], worker: WorkerProcess
) -> None:
    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert records, worker.log()[-2000:]
    mine = [record for record in records if record["search_id"] == finished_search["id"]]
    started = [record for record in mine if "started" in record["message"]]
    assert started and started[0]["attempt"] == 1, mine
    assert {"time", "level", "logger", "message", "request_id"} <= set(started[0])
    # Celery's own loggers through the same formatter.
    assert any(record["logger"].startswith("celery") for record in records)


def test_ingester_lines_carry_the_search_id(
    api: TestClient, stack_settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    from app.events.schema import StatusEvent

    client = redis.Redis.from_url(stack_settings.redis_url, decode_responses=True)
    try:
        # An event for a search that does not exist: the ingester drops it, with a warning.
        entry = client.xadd(
            stack_settings.events_stream,
            {"data": StatusEvent(search_id="no-such-search", status="running").model_dump_json()},
        )
    finally:
        client.close()

    def dropped() -> list[dict]:
        err = capsys.readouterr().err
        found = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
        collected.extend(found)
        return [line for line in collected if "unknown search" in line.get("message", "")]

    collected: list[dict] = []
    try:
        lines = wait_until(dropped, 60, "the ingester's warning about the unknown search", 0.2)
    finally:
        client = redis.Redis.from_url(stack_settings.redis_url)
        client.xdel(stack_settings.events_stream, entry)  # other tests read the stream themselves
        client.close()
    assert lines[0]["search_id"] == "no-such-search" and lines[0]["level"] == "WARNING"
