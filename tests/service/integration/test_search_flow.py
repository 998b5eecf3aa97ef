"""A search through the whole service: API -> Celery worker -> Redis Stream -> ingester -> SQL -> API."""

from __future__ import annotations

import io
import statistics
import threading
import time
from datetime import datetime
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from app.events.schema import parse_event
from app.settings import Settings
from darts_core.client.sse import iter_sse

from .conftest import finish, get_search, submit, tiny_spec, wait_for_status, wait_until


def read_sse(api: TestClient, path: str, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """Every event of an SSE response (until the server ends it), as {"event", "id", "data"} dicts
    (`darts_core.client.sse`, the client's parser: `id` is the stream's last event id, as a browser
    keeps it)."""
    with api.stream("GET", path, headers=headers or {}) as response:
        assert response.status_code == 200, response.read()
        return [
            {"event": event.event, "id": event.id, "data": event.json()}
            for event in iter_sse(response.iter_lines())
        ]


def stream_events(settings: Settings, search_id: str) -> list[tuple[str, Any]]:
    """The worker's events of `search_id`, in stream order, with their entry ids."""
    client = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        entries = client.xrange(settings.events_stream)
    finally:
        client.close()
    events = [(entry_id, parse_event(fields["data"])) for entry_id, fields in entries]
    return [(entry_id, event) for entry_id, event in events if event.job_id == search_id]


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_search_runs_end_to_end(api: TestClient, running_worker, stack_settings: Settings) -> None:
    epochs = 4
    # Epochs of several steps each, so that polling sees them one at a time even on a fast machine.
    created = submit(api, tiny_spec(epochs=epochs, samples=256, name="end to end"))
    search_id = created["id"]
    assert created["status"] == "queued"
    assert created["epoch"] == 0

    # Poll GET /searches/{id} in the background and note when each epoch first became visible.
    seen: list[tuple[float, str, int]] = []
    stop_polling = threading.Event()

    def poll() -> None:
        while not stop_polling.is_set():
            search = api.get(f"/searches/{search_id}").json()
            seen.append((time.time(), search["status"], search["epoch"]))
            if search["status"] in ("succeeded", "failed", "cancelled"):
                return
            time.sleep(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        # Follow it live over SSE: it ends after the terminal status.
        live = read_sse(api, f"/searches/{search_id}/events")
        poller.join(timeout=30)
    finally:
        stop_polling.set()
        finish(api, search_id)

    final = get_search(api, search_id)
    assert final["status"] == "succeeded", final["error"]
    assert final["epoch"] == epochs and final["finished_at"] is not None and final["error"] is None

    # queued -> running -> succeeded, and the epochs showed up one by one, never going back.
    statuses = [status for _, status, _ in seen]
    assert statuses[0] in ("queued", "running")
    assert "running" in statuses
    observed_epochs = [epoch for _, _, epoch in seen]
    assert observed_epochs == sorted(observed_epochs)
    running_epochs = {epoch for _, status, epoch in seen if status == "running"}
    assert len(running_epochs - {0}) >= 2, f"epochs did not appear one by one: {running_epochs}"

    # The genotype the API serves is the one of the worker's last epoch event.
    events = stream_events(stack_settings, search_id)
    epoch_events = [event for _, event in events if event.type == "epoch"]
    assert [event.epoch for event in epoch_events] == list(range(1, epochs + 1))
    assert [event.status for _, event in events if event.type == "status"] == ["running", "succeeded"]
    genotype = api.get(f"/searches/{search_id}/genotype")
    assert genotype.status_code == 200
    assert genotype.json() == epoch_events[-1].genotype
    assert final["genotype"] == epoch_events[-1].genotype
    assert final["best_valid_acc"] == max(event.valid_acc for event in epoch_events)

    # /epochs: every epoch exactly once, with the worker's numbers.
    records = api.get(f"/searches/{search_id}/epochs").json()["items"]
    assert [record["epoch"] for record in records] == list(range(1, epochs + 1))
    for record, event in zip(records, epoch_events, strict=True):
        assert record["valid_acc"] == event.valid_acc and record["train_loss"] == event.train_loss
        assert record["alphas"] == event.alphas

    # SSE: each epoch once, in order, ids = stream entry ids; then the terminal status.
    live_epochs = [event for event in live if event["event"] == "epoch"]
    assert [event["data"]["epoch"] for event in live_epochs] == list(range(1, epochs + 1))
    entry_ids = [entry_id for entry_id, event in events if event.type == "epoch"]
    assert [event["id"] for event in live_epochs] == entry_ids
    assert live[-1]["event"] == "status" and live[-1]["data"]["status"] == "succeeded"

    # Resuming after the first epoch's id replays only the later ones.
    resumed = read_sse(api, f"/searches/{search_id}/events", headers={"Last-Event-ID": entry_ids[0]})
    assert [event["data"]["epoch"] for event in resumed if event["event"] == "epoch"] == list(
        range(2, epochs + 1)
    )
    assert resumed[-1]["data"]["status"] == "succeeded"

    # Figures for the report: POST -> worker started, and epoch end in the worker -> visible in GET.
    start_latency = (parse_time(final["started_at"]) - parse_time(final["created_at"])).total_seconds()
    visible_at = {}
    for at, _, epoch in seen:
        visible_at.setdefault(epoch, at)
    epoch_latencies = [
        visible_at[event.epoch] - int(entry_id.split("-")[0]) / 1000
        for entry_id, event in zip(entry_ids, epoch_events, strict=True)
        if event.epoch in visible_at and event.epoch < epochs  # the last one may show up with `succeeded`
    ]
    print(
        f"\nPOST -> running: {start_latency:.3f} s; epoch end -> visible in GET: median "
        f"{statistics.median(epoch_latencies) * 1000:.0f} ms over {len(epoch_latencies)} epochs "
        f"(poll interval 20 ms)"
    )


def _npz_bytes(samples: int = 64, classes: int = 2) -> bytes:
    rng = np.random.default_rng(0)
    y = np.arange(samples) % classes
    x = rng.integers(0, 60, size=(samples, 1, 8, 8)).astype(np.uint8)
    x[y == 1, :, 2:6, 2:6] = 255  # a bright square makes class 1 learnable
    buffer = io.BytesIO()
    np.savez(buffer, x=x, y=y)
    return buffer.getvalue()


def test_search_on_an_uploaded_dataset(api: TestClient, running_worker) -> None:
    upload = api.post("/datasets", files={"file": ("squares.npz", _npz_bytes(), "application/octet-stream")})
    assert upload.status_code == 201, upload.text
    dataset = upload.json()
    spec = tiny_spec(epochs=1, name="on an upload")
    spec["dataset"] = {"id": dataset["id"]}
    search_id = submit(api, spec)["id"]
    try:
        final = wait_for_status(api, search_id, {"succeeded", "failed", "cancelled"})
    finally:
        finish(api, search_id)
    assert final["status"] == "succeeded", final["error"]
    assert final["epoch"] == 1
    records = api.get(f"/searches/{search_id}/epochs").json()["items"]
    assert [record["epoch"] for record in records] == [1]


@pytest.mark.once
@pytest.mark.parametrize(
    "method",
    [
        {"name": "gdas", "tau_max": 5.0},
        {"name": "beta_darts"},
        {"name": "sdarts_rs"},
        {"name": "sdarts_adv"},
        {"name": "drnas"},
        {"name": "darts_minus"},
        {"name": "random_ws", "candidates": 4, "finalists": 2},
        {"name": "fair_darts", "threshold": 0.5},
    ],
    ids=lambda method: method["name"],
)
def test_every_search_method_runs_through_the_service(api: TestClient, running_worker, method) -> None:
    # DARTS runs in the tests above; each other method once, on the tiny spec.
    search_id = submit(api, tiny_spec(epochs=2, name=f"method {method['name']}", method=method))["id"]
    try:
        final = wait_for_status(api, search_id, {"succeeded", "failed", "cancelled"})
    finally:
        finish(api, search_id)
    assert final["status"] == "succeeded", final["error"]
    assert final["spec"]["method"]["name"] == method["name"] and final["genotype"] is not None
    records = api.get(f"/searches/{search_id}/epochs").json()["items"]
    assert [record["epoch"] for record in records] == [1, 2]
    assert all(0.0 <= record["valid_acc"] <= 1.0 for record in records)
    # Every epoch names its method and the values its schedules took (GDAS's tau falls 5 -> 0.1).
    assert {record["method"] for record in records} == {method["name"]}
    if method["name"] == "gdas":
        assert [record["schedule"]["tau"] for record in records] == pytest.approx([5.0, 0.1])


def test_a_search_that_cannot_run_fails_with_its_error(api: TestClient, running_worker) -> None:
    # The spec is valid, but the dataset's search-train split is smaller than the batch: darts_core
    # refuses it when the worker starts the search, and the error reaches the API.
    spec = tiny_spec(epochs=1, name="too big a batch")
    spec["training"]["batch_size"] = 256
    search_id = submit(api, spec)["id"]
    final = wait_for_status(api, search_id, {"succeeded", "failed", "cancelled"})
    assert final["status"] == "failed"
    assert "batch_size" in final["error"]
    wait_until(lambda: get_search(api, search_id)["finished_at"], 5, "finished_at to be set")
