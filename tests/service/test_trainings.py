"""`/trainings`: create (from a genotype or a search), validation naming the field, read, list, epochs,
events, cancel, delete, weights, owners and the shared quota; over a real migrated database."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.events.schema import StatusEvent, TrainingEpochEvent, TrainingOutcome
from app.lifecycle.projection import apply_event
from app.services import exports
from app.settings import Settings
from app.storage import training_weights_path

from .conftest import GENOTYPE_TEMPLATE, epoch_genotype
from .test_search_events import sse_events
from .test_searches import broker_messages

GENOTYPE_BODY = {"genotype": GENOTYPE_TEMPLATE, "dataset": {"name": "digits"}, "training": {"epochs": 2}}


def create(client: TestClient, body: dict | None = None, **headers: str) -> dict:
    response = client.post("/trainings", json=body or GENOTYPE_BODY, headers=headers or None)
    assert response.status_code == 201, response.text
    return response.json()


def apply(session: Session, event) -> str:
    outcome = apply_event(session, event, None)
    session.commit()
    return outcome


def record_training_epochs(session: Session, training_id: str, epochs: int) -> None:
    for epoch in range(1, epochs + 1):
        event = TrainingEpochEvent(
            job_id=training_id, epoch=epoch, train_loss=1.0 / epoch, train_acc=0.5 + 0.1 * epoch,
            valid_loss=0.9 / epoch, valid_acc=0.5 + 0.05 * epoch, test_loss=0.8 / epoch,
            test_acc=0.6 + 0.1 * epoch, lr=0.025 / epoch, drop_path_prob=0.1 * epoch, seconds=1.5,
        )
        assert apply(session, event) == "stored"


def finish(session: Session, training_id: str, status: str = "succeeded") -> None:
    outcome = TrainingOutcome(test_accuracy=0.98, test_loss=0.06, valid_accuracy=0.97, parameters=1234,
                              multiply_adds=5678) if status == "succeeded" else None
    for step in ("running", status):
        event = StatusEvent(job_id=training_id, kind="training", status=step, outcome=outcome,
                            error="boom" if step == "failed" else None)
        assert apply(session, event) in (("stored", "duplicate") if step == "running" else ("stored",))


# ------------------------------------------------------------------------------------------- create


def test_create_from_a_genotype_fills_every_default_and_queues_a_run_training_task(
    client: TestClient, api_settings: Settings
) -> None:
    waiting_before = len(broker_messages(api_settings))
    response = client.post("/trainings", json=GENOTYPE_BODY)
    assert response.status_code == 201, response.text
    training = response.json()
    assert response.headers["location"] == f"/trainings/{training['id']}"
    assert (training["status"], training["epoch"], training["epochs"]) == ("queued", 0, 2)
    assert training["genotype"]["normal"] == GENOTYPE_TEMPLATE["normal"]
    assert training["search_id"] is None and training["test_accuracy"] is None
    spec = training["spec"]
    assert spec["network"] == {"init_channels": 16, "cells": 5, "auxiliary": False, "auxiliary_weight": 0.4,
                               "drop_path_prob": 0.2}
    assert spec["training"]["epochs"] == 2 and spec["training"]["batch_size"] == 64
    assert spec["dataset"]["name"] == "digits" and spec["name"] == training["name"] == "training"
    messages = broker_messages(api_settings)
    assert len(messages) == waiting_before + 1
    assert messages[-1]["headers"]["task"] == "darts.run_training"


def test_the_darts_string_form_of_a_genotype_is_accepted(client: TestClient) -> None:
    from darts_core.spec.genotype import DARTS_V2

    training = create(client, {"genotype": DARTS_V2.to_darts(), "dataset": {"name": "digits"}})
    assert training["genotype"] == DARTS_V2.to_json()
    assert training["epochs"] == 10  # TrainingJobConfig's default


def test_create_from_a_search_takes_its_final_or_an_epoch_s_genotype_and_its_dataset(
    client: TestClient, record_epochs
) -> None:
    spec = {"dataset": {"name": "digits", "test_fraction": 0.3}, "training": {"epochs": 3}}
    search = client.post("/searches", json=spec).json()
    record_epochs(search["id"], 3, status="succeeded")

    final = create(client, {"search_id": search["id"], "training": {"epochs": 1}})
    assert final["genotype"] == epoch_genotype(3)
    assert (final["search_id"], final["search_epoch"]) == (search["id"], None)
    assert final["spec"]["dataset"] == {"name": "digits", "test_fraction": 0.3, "seed": 0}
    assert final["name"] == "digits search training"
    earlier = create(client, {"search_id": search["id"], "epoch": 2, "dataset": {"name": "digits"}})
    assert earlier["genotype"] == epoch_genotype(2) and earlier["search_epoch"] == 2
    assert earlier["spec"]["dataset"]["test_fraction"] == 0.2


@pytest.mark.parametrize(
    ("body", "loc", "words"),
    [
        ({"dataset": {"name": "digits"}}, ["body", "genotype"], "exactly one of genotype"),
        ({**GENOTYPE_BODY, "search_id": "x"}, ["body", "genotype"], "exactly one of genotype"),
        ({**GENOTYPE_BODY, "epoch": 2}, ["body", "epoch"], "epoch needs search_id"),
        ({"genotype": GENOTYPE_TEMPLATE}, ["body", "dataset"], "dataset is required"),
        ({**GENOTYPE_BODY, "genotype": {"normal": [["conv_9x9", 0]]}}, ["body", "genotype"], "invalid"),
        ({**GENOTYPE_BODY, "genotype": "Genotype(normal=[("}, ["body", "genotype"], "invalid genotype"),
        (  # 100 nodes per cell took 42 s to admit: more than the search space's 8 are refused at once
            {**GENOTYPE_BODY, "genotype": {"normal": [["skip_connect", 0], ["skip_connect", 1]] * 100,
                                           "reduce": [["max_pool_3x3", 0], ["skip_connect", 1]] * 100}},
            ["body", "genotype"],
            "at most 8 internal nodes",
        ),
        ({**GENOTYPE_BODY, "training": {"epochs": 0}}, ["body", "training", "epochs"], "greater than"),
        ({**GENOTYPE_BODY, "network": {"cells": "five"}}, ["body", "network", "cells"], "integer"),
        ({**GENOTYPE_BODY, "learning_rate": 1}, ["body", "learning_rate"], "Extra inputs"),
        ({**GENOTYPE_BODY, "dataset": {"id": "no-such-upload"}}, ["body", "dataset", "id"], "unknown"),
    ],
)
def test_bad_input_is_a_422_naming_the_field(client: TestClient, body: dict, loc: list, words: str) -> None:
    response = client.post("/trainings", json=body)
    assert response.status_code == 422, response.text
    errors = response.json()["detail"]
    assert any(error["loc"] == loc and words in error["msg"] for error in errors), errors
    assert client.get("/trainings").json()["items"] == []


def test_a_search_without_the_genotype_asked_for_is_refused_naming_the_field(
    client: TestClient, record_epochs
) -> None:
    search = client.post("/searches", json={"dataset": {"name": "digits"}}).json()
    refused = client.post("/trainings", json={"search_id": search["id"]})
    assert refused.status_code == 409 and "search_id" in refused.json()["detail"]
    record_epochs(search["id"], 1)  # running, one epoch: that epoch may be trained, not a final one
    assert client.post("/trainings", json={"search_id": search["id"]}).status_code == 409
    missing = client.post("/trainings", json={"search_id": search["id"], "epoch": 5})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "epoch"]
    assert create(client, {"search_id": search["id"], "epoch": 1})["genotype"] == epoch_genotype(1)
    unknown = client.post("/trainings", json={"search_id": "00000000-0000-4000-8000-000000000000"})
    assert unknown.status_code == 404


# ------------------------------------------------------------------------------------------ read


def test_epochs_final_figures_events_and_weights_of_a_training(
    client: TestClient, db_session: Session, api_settings: Settings
) -> None:
    client.app.state.sse_poll_seconds = 0.05
    training = create(client)
    url = f"/trainings/{training['id']}"
    assert client.get(f"{url}/weights").status_code == 409
    record_training_epochs(db_session, training["id"], 2)
    running = client.get(url).json()
    assert (running["status"], running["epoch"], running["metrics"]["test_acc"]) == ("running", 2, 0.8)
    page = client.get(f"{url}/epochs", params={"limit": 1}).json()
    assert [item["epoch"] for item in page["items"]] == [1] and page["next_cursor"] == "1"
    rest = client.get(f"{url}/epochs", params={"cursor": "1"}).json()["items"]
    assert [(item["epoch"], item["valid_acc"], item["drop_path_prob"]) for item in rest] == [(2, 0.6, 0.2)]
    assert client.get(f"{url}/epochs", params={"cursor": "x"}).status_code == 400

    weights = training_weights_path(api_settings, training["id"])
    weights.parent.mkdir(parents=True, exist_ok=True)
    weights.write_bytes(b"safetensors bytes")
    finish(db_session, training["id"])
    done = client.get(url).json()
    assert done["status"] == "succeeded"
    assert (done["test_accuracy"], done["valid_accuracy"], done["parameters"], done["multiply_adds"]) == (
        0.98, 0.97, 1234, 5678
    )
    download = client.get(f"{url}/weights")
    assert download.status_code == 200 and download.content == b"safetensors bytes"
    assert download.headers["content-type"] == "application/octet-stream"
    with client.stream("GET", f"{url}/events") as response:
        events = list(sse_events(response))
    assert [event["event"] for event in events] == ["epoch", "epoch", "status"]
    assert events[1]["data"]["test_acc"] == 0.8 and events[-1]["data"]["status"] == "succeeded"

    assert client.post(f"{url}/cancel").status_code == 409
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404 and not weights.exists()


@pytest.mark.once  # an export is a child process of its own, whatever the database
def test_exports_are_built_once_beside_the_weights_and_go_with_the_training(
    client: TestClient, db_session: Session, api_settings: Settings
) -> None:
    import torch

    from darts_core import save_trained
    from darts_core.nn.genotype_network import GenotypeNetwork
    from darts_core.spec.genotype import DARTS_V2
    from darts_core.train.export import read_export_metadata

    training = create(client)
    url = f"/trainings/{training['id']}"
    assert client.get(f"{url}/model.onnx").status_code == 409  # not succeeded yet
    weights = training_weights_path(api_settings, training["id"])
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    network = GenotypeNetwork(DARTS_V2, 1, 10, init_channels=4, cells=2).eval()
    save_trained(network, weights, input_shape=(1, 8, 8), class_names=[str(i) for i in range(10)])
    finish(db_session, training["id"])

    onnx_reply = client.get(f"{url}/model.onnx")
    assert onnx_reply.status_code == 200, onnx_reply.text
    assert onnx_reply.headers["content-type"] == "application/onnx"
    assert f'filename="training-{training["id"]}.onnx"' in onnx_reply.headers["content-disposition"]
    kept = weights.with_name("model.onnx")
    assert onnx_reply.content == kept.read_bytes()
    assert read_export_metadata(kept)["input_shape"] == [1, 8, 8]
    built = kept.stat().st_mtime_ns
    assert client.get(f"{url}/model.onnx").content == onnx_reply.content
    assert kept.stat().st_mtime_ns == built  # served from the file, not exported again
    script_reply = client.get(f"{url}/model.pt")
    assert script_reply.status_code == 200
    assert script_reply.content == weights.with_name("model.pt").read_bytes()
    kept_files = sorted(item.name for item in weights.parent.iterdir())
    assert kept_files == ["model.onnx", "model.pt", "model.safetensors"]
    assert exports._file_locks == {}  # a file's lock goes with its last request

    # An export killed mid-write leaves its temporary (named by its pid) and no file: the next request
    # removes it and builds the file; a temporary of a process that still runs is left alone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    left = kept.with_name(f".model.onnx.{dead}.0badc0de.tmp")
    alive = kept.with_name(f".model.onnx.{os.getpid()}.600dc0de.tmp")
    kept.unlink()
    left.write_bytes(b"half an onnx file")
    alive.write_bytes(b"being written")
    rebuilt = client.get(f"{url}/model.onnx")
    assert rebuilt.status_code == 200 and rebuilt.content == onnx_reply.content
    assert not left.exists() and alive.exists()
    alive.unlink()

    # Weights that cannot be exported (no input shape recorded, or not ours): 409 with the reason, no file.
    save_trained(network, weights)
    kept.unlink()
    refused = client.get(f"{url}/model.onnx")
    assert refused.status_code == 409 and "input_shape" in refused.json()["detail"], refused.text
    weights.write_bytes(b"not safetensors")
    refused = client.get(f"{url}/model.onnx")
    assert refused.status_code == 409 and "cannot be exported" in refused.json()["detail"]
    assert not kept.exists()

    assert client.delete(url).status_code == 204
    assert not weights.parent.exists()
    assert client.get(f"{url}/model.pt").status_code == 404


def test_cancel_and_delete_follow_the_lifecycle(client: TestClient) -> None:
    training = create(client)
    url = f"/trainings/{training['id']}"
    assert client.delete(url).status_code == 409
    cancelled = client.post(f"{url}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    assert client.post(f"{url}/cancel").json()["status"] == "cancelled"  # idempotent
    assert client.delete(url).status_code == 204


def test_lists_are_newest_first_and_paginated(client: TestClient) -> None:
    ids = [create(client)["id"] for _ in range(3)]
    first = client.get("/trainings", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == ids[::-1][:2]
    second = client.get("/trainings", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [item["id"] for item in second["items"]] == ids[:1] and second["next_cursor"] is None
    assert client.get("/trainings", params={"status": "running"}).json()["items"] == []


# ------------------------------------------------------------------------------------------ owners


def test_another_owner_gets_404_for_trainings_and_their_source_searches(
    client: TestClient, make_key, record_epochs
) -> None:
    _bob_name, bob = make_key()
    _admin_name, admin = make_key(admin=True)
    bob_headers = {"Authorization": f"Bearer {bob}"}
    training = create(client)
    for suffix in ("", "/epochs", "/events", "/weights", "/model.onnx", "/model.pt"):
        response = client.get(f"/trainings/{training['id']}{suffix}", headers=bob_headers)
        assert response.status_code == 404, suffix
        assert response.json()["detail"] == f"training {training['id']!r} not found"
    assert client.post(f"/trainings/{training['id']}/cancel", headers=bob_headers).status_code == 404
    assert client.delete(f"/trainings/{training['id']}", headers=bob_headers).status_code == 404
    assert client.get("/trainings", headers=bob_headers).json()["items"] == []
    # Nor may bob train the genotype of someone else's search.
    search = client.post("/searches", json={"dataset": {"name": "digits"}}).json()
    record_epochs(search["id"], 1, status="succeeded")
    refused = client.post("/trainings", json={"search_id": search["id"]}, headers=bob_headers)
    assert refused.status_code == 404
    # An admin sees and may retrain everyone's.
    admin_headers = {"Authorization": f"Bearer {admin}"}
    assert client.get(f"/trainings/{training['id']}", headers=admin_headers).status_code == 200
    retrained = client.post("/trainings", json={"search_id": search["id"]}, headers=admin_headers)
    assert retrained.status_code == 201


def test_the_active_jobs_quota_counts_searches_and_trainings(app_client, make_key) -> None:
    api = app_client(max_active_searches_per_owner=2)
    _name, key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    assert api.post("/searches", json={"dataset": {"name": "digits"}}, headers=headers).status_code == 201
    first = api.post("/trainings", json=GENOTYPE_BODY, headers=headers)
    assert first.status_code == 201
    for path, body in (("/trainings", GENOTYPE_BODY), ("/searches", {"dataset": {"name": "digits"}})):
        refused = api.post(path, json=body, headers=headers)
        assert refused.status_code == 429 and "MAX_ACTIVE_SEARCHES_PER_OWNER" in refused.json()["detail"]
    api.post(f"/trainings/{first.json()['id']}/cancel", headers=headers)
    assert api.post("/trainings", json=GENOTYPE_BODY, headers=headers).status_code == 201


def test_a_training_too_large_for_a_worker_is_refused_by_admission(app_client, make_key) -> None:
    api = app_client(worker_memory_bytes=64 * 1024**2)
    _name, key = make_key()
    headers = {"Authorization": f"Bearer {key}"}
    big = {**GENOTYPE_BODY, "network": {"init_channels": 256, "cells": 20}, "training": {"batch_size": 1024}}
    refused = api.post("/trainings", json=big, headers=headers)
    assert refused.status_code == 422, refused.text
    [error] = refused.json()["detail"]
    assert error["type"] == "does_not_fit" and "WORKER_MEMORY_BYTES" in error["msg"]
    assert error["ctx"]["peak_memory_bytes"] > error["ctx"]["limit_bytes"] == 64 * 1024**2
    assert api.post("/trainings", json=GENOTYPE_BODY, headers=headers).status_code == 201


def test_requests_for_one_export_wait_for_each_other_and_leave_no_lock_behind(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    inside, release, order = threading.Event(), threading.Event(), []

    def first() -> None:
        with exports._file_lock(path):
            order.append("first in")
            inside.set()
            release.wait(10)
            order.append("first out")

    def second() -> None:
        with exports._file_lock(path):
            order.append("second in")

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    assert inside.wait(10)
    threads[1].start()
    deadline = time.monotonic() + 10
    while exports._file_locks[path][1] != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert exports._file_locks[path][1] == 2  # one holds it, one waits
    with exports._file_lock(tmp_path / "other.onnx"):  # another file is not held up
        assert set(exports._file_locks) == {path, tmp_path / "other.onnx"}
    release.set()
    for thread in threads:
        thread.join(10)
    assert order == ["first in", "first out", "second in"]
    assert exports._file_locks == {}
