"""`/searches`: create, validation, read, list, genotype, epochs, cancel and delete."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.main import create_app
from app.models import Search, SearchEpoch
from app.settings import Settings
from darts_core.spec.method_spec import METHOD_NAMES
from darts_core.spec.op_names import DARTS_OP_NAMES

from .conftest import epoch_genotype
from .test_datasets import small_images

DIGITS = {"dataset": {"name": "digits"}}


def create(client: TestClient, spec: dict | None = None) -> dict:
    response = client.post("/searches", json=spec or DIGITS)
    assert response.status_code == 201, response.text
    return response.json()


def broker_messages(settings: Settings) -> list[dict]:
    """The task messages waiting on the settings' Celery queue in Redis (oldest first)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        raw = client.lrange(f"{settings.redis_prefix}:celery:{settings.celery_queue}", 0, -1)
    finally:
        client.close()
    return [json.loads(message) for message in reversed(raw)]


# ------------------------------------------------------------------------------------------- create


def test_create_returns_the_resource_with_defaults_and_queues_a_task(
    client: TestClient, api_settings: Settings, db_session: Session
) -> None:
    waiting_before = len(broker_messages(api_settings))
    response = client.post("/searches", json={"dataset": {"name": "digits"}, "training": {"epochs": 3}})

    assert response.status_code == 201, response.text
    search = response.json()
    assert response.headers["location"] == f"/searches/{search['id']}"
    assert search["status"] == "queued"
    assert search["name"] == "digits search"
    assert (search["epoch"], search["epochs"]) == (0, 3)
    assert search["genotype"] is None and search["metrics"] is None and search["error"] is None
    assert search["started_at"] is None and search["finished_at"] is None
    assert search["created_at"].endswith(("Z", "+00:00"))
    spec = search["spec"]
    assert spec["dataset"] == {"name": "digits", "test_fraction": 0.2, "seed": 0}
    assert spec["search_space"] == {
        "primitives": list(DARTS_OP_NAMES),  # the DARTS eight, in the reference's order
        "internal_nodes": 4,
        "partial_channels": 1,
        "edge_normalization": False,
    }
    assert spec["network"] == {"cells": 8, "init_channels": 16, "stem_multiplier": 3}
    assert spec["training"] == {
        "epochs": 3, "batch_size": 64, "train_portion": 0.5, "order": "first", "weight_lr": 0.025,
        "weight_lr_min": 0.001, "momentum": 0.9, "weight_decay": 3e-4, "arch_lr": 3e-4,
        "arch_weight_decay": 1e-3, "grad_clip": 5.0, "seed": 0, "early_stop": None,
        "max_skip_connections": 2, "eigenvalue_window": 5, "eigenvalue_threshold": 1.3, "hessian_every": None,
        "augmentation": {"crop_padding": None, "horizontal_flip": None},
    }
    assert search["stopped_early"] is False and search["stop_reason"] is None
    assert spec["resources"] == {
        "device": "auto", "precision": "auto", "compile": "off", "time_limit_seconds": None
    }
    assert spec["method"] == {"name": "darts"}
    assert client.get(f"/searches/{search['id']}").json() == search

    # The task is on the broker: one new message naming the task, carrying the search id.
    messages = broker_messages(api_settings)
    assert len(messages) == waiting_before + 1
    message = messages[-1]
    assert message["headers"]["task"] == "darts.run_search"
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    assert args == [search["id"]]
    row = db_session.get(Search, search["id"])
    assert row is not None and row.celery_task_id == message["headers"]["id"]
    assert row.dataset_ref == "builtin:digits"


def test_create_keeps_the_given_values(client: TestClient) -> None:
    spec = {
        "name": "tiny",
        "dataset": {"name": "synthetic", "num_samples": 64, "image_size": [8, 12]},
        "search_space": {"primitives": ["skip_connect", "sep_conv_3x3"], "internal_nodes": 2},
        "network": {"cells": 3, "init_channels": 4},
        "training": {"epochs": 2, "batch_size": 16, "order": "second", "seed": 7},
        "resources": {"device": "cpu"},
    }
    echoed = create(client, spec)["spec"]
    assert echoed["name"] == "tiny"
    assert echoed["dataset"] == {
        "name": "synthetic",
        "num_samples": 64,
        "num_classes": 4,
        "channels": 3,
        "image_size": [8, 12],
        "noise": 0.5,
        "test_fraction": 0.2,
        "seed": 0,
    }
    assert echoed["search_space"] == {
        "primitives": ["skip_connect", "sep_conv_3x3"],
        "internal_nodes": 2,
        "partial_channels": 1,
        "edge_normalization": False,
    }
    assert echoed["network"] == {"cells": 3, "init_channels": 4, "stem_multiplier": 3}
    assert echoed["training"]["order"] == "second" and echoed["training"]["seed"] == 7
    assert echoed["resources"] == {
        "device": "cpu", "precision": "auto", "compile": "off", "time_limit_seconds": None
    }


def _error_messages(response) -> str:
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    return " | ".join(f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in detail)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"dataset": {"name": "digits"}, "colour": "red"}, "body.colour: Extra inputs are not permitted"),
        ({"dataset": {"name": "digits"}, "training": {"epochz": 3}}, "training.epochz: Extra inputs"),
        ({}, "body.dataset: Field required"),
        ({"dataset": {"name": "mnist"}}, "dataset.builtin.name: Input should be 'digits'"),
        ({"dataset": "digits"}, 'dataset must be {"name": "digits"}'),
        (
            {**DIGITS, "search_space": {"primitives": ["sep_conv_3x3", "conv_9x9"]}},
            "search_space.primitives.1: Input should be 'none', 'max_pool_3x3'",
        ),
        (
            {**DIGITS, "search_space": {"primitives": ["sep_conv_3x3", "sep_conv_3x3"]}},
            "search_space.primitives: Value error, must not repeat an operation",
        ),
        ({**DIGITS, "search_space": {"primitives": ["sep_conv_3x3"]}}, "at least 2 items"),
        ({**DIGITS, "search_space": {"primitives": ["none"] * 10_000}}, "Tuple should have at most 8"),
        ({**DIGITS, "search_space": {"primitives": ["none\x00"]}}, "primitives.0: Input should be 'none'"),
        ({**DIGITS, "name": "a\x00b"}, "body.name: Value error, must not contain NUL characters"),
        ({**DIGITS, "name": "x" * 201}, "body.name: String should have at most 200 characters"),
        ({"dataset": {"id": "abc\x00"}}, "dataset.upload.id: Value error, must not contain NUL characters"),
        ({**DIGITS, "training": {"epochs": True}}, "training.epochs: Input should be a valid integer"),
        ({**DIGITS, "training": {"grad_clip": "5"}}, "grad_clip: Value error, must be a finite number"),
        ({"dataset": {"name": "synthetic", "channels": 65}}, "Input should be less than or equal to 64"),
        ({"dataset": {"name": "synthetic", "image_size": 1025}}, "less than or equal to 1024"),
        ({"dataset": {"name": "synthetic", "noise": 1e3}}, "noise: Input should be less than 1000"),
        ({**DIGITS, "training": {"epochs": 0}}, "training.epochs: Input should be greater than or equal"),
        ({**DIGITS, "training": {"epochs": 1001}}, "epochs: Input should be less than or equal to 1000"),
        ({**DIGITS, "training": {"batch_size": 5000}}, "training.batch_size: Input should be less than"),
        ({**DIGITS, "training": {"train_portion": 1.0}}, "train_portion: Input should be less than 1"),
        ({**DIGITS, "training": {"order": "third"}}, "training.order: Input should be 'first' or 'second'"),
        ({**DIGITS, "training": {"weight_lr": 0}}, "training.weight_lr: Input should be greater than 0"),
        ({**DIGITS, "training": {"weight_lr": 0.01, "weight_lr_min": 0.1}}, "must be <= weight_lr (0.01)"),
        (
            {"dataset": {"name": "synthetic", "num_samples": 100_000, "image_size": 512}},
            "num_samples x channels x height x width = 78643200000 exceeds 67108864",
        ),
        (
            {"dataset": {"name": "synthetic", "channels": 64, "image_size": 1024}},
            "num_samples x channels x height x width = 34359738368 exceeds 67108864",
        ),
        (
            {"dataset": {"name": "synthetic", "num_samples": 10, "num_classes": 6}},
            "num_samples (10) must be at least 2 x num_classes (6)",
        ),
        ({**DIGITS, "resources": {"device": "tpu"}}, "device: Input should be 'auto', 'cpu' or 'cuda'"),
        (
            {**DIGITS, "resources": {"precision": "fp16"}},
            "resources.precision: Input should be 'auto', 'fp32' or 'bf16'",
        ),
    ],
)
def test_create_rejects_bad_specs_with_a_message(client: TestClient, spec: dict, expected: str) -> None:
    response = client.post("/searches", json=spec)
    assert expected in _error_messages(response)
    assert client.get("/searches").json()["items"] == []


def test_create_rejects_an_unknown_dataset_id(client: TestClient, api_settings: Settings) -> None:
    waiting_before = len(broker_messages(api_settings))
    response = client.post("/searches", json={"dataset": {"id": "no-such-dataset"}})
    assert response.status_code == 422
    assert response.json()["detail"] == [
        {
            "loc": ["body", "dataset", "id"],
            "msg": "unknown dataset id 'no-such-dataset': upload it with POST /datasets first",
            "type": "unknown_dataset",
        }
    ]
    assert client.get("/searches").json()["items"] == []
    assert len(broker_messages(api_settings)) == waiting_before


def test_create_answers_503_and_keeps_nothing_when_the_broker_is_down(
    api_settings: Settings, db_session: Session, auth_headers: dict[str, str]
) -> None:
    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as client:
        response = client.post("/searches", json=DIGITS)
    assert response.status_code == 503
    assert "broker (Redis) is unreachable" in response.json()["detail"]
    assert db_session.query(Search).count() == 0


# ------------------------------------------------------------------------------------------- read


def test_unknown_search_is_404_everywhere(client: TestClient) -> None:
    for method, path in [
        ("GET", "/searches/nope"),
        ("GET", "/searches/nope/genotype"),
        ("GET", "/searches/nope/genotype.svg"),
        ("GET", "/searches/nope/epochs"),
        ("GET", "/searches/nope/events"),
        ("POST", "/searches/nope/cancel"),
        ("DELETE", "/searches/nope"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"detail": "search 'nope' not found"}


def test_list_is_newest_first_with_cursor_pages_and_status_filter(client: TestClient, set_status) -> None:
    ids = [create(client)["id"] for _ in range(5)]  # oldest first
    set_status(ids[1], "running")
    set_status(ids[3], "running")

    first = client.get("/searches", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == [ids[4], ids[3]]
    assert first["next_cursor"]
    second = client.get("/searches", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [item["id"] for item in second["items"]] == [ids[2], ids[1]]
    third = client.get("/searches", params={"limit": 2, "cursor": second["next_cursor"]}).json()
    assert [item["id"] for item in third["items"]] == [ids[0]]
    assert third["next_cursor"] is None

    whole = client.get("/searches").json()
    assert [item["id"] for item in whole["items"]] == ids[::-1] and whole["next_cursor"] is None

    running = client.get("/searches", params={"status": "running", "limit": 1}).json()
    assert [item["id"] for item in running["items"]] == [ids[3]]
    running_rest = client.get(
        "/searches", params={"status": "running", "limit": 1, "cursor": running["next_cursor"]}
    ).json()
    assert [item["id"] for item in running_rest["items"]] == [ids[1]]
    assert running_rest["next_cursor"] is None
    queued = client.get("/searches", params={"status": "queued"}).json()["items"]
    assert [item["id"] for item in queued] == [ids[4], ids[2], ids[0]]


def test_list_rejects_bad_limits_statuses_and_cursors(client: TestClient) -> None:
    assert client.get("/searches", params={"limit": 0}).status_code == 422
    assert client.get("/searches", params={"limit": 501}).status_code == 422
    assert client.get("/searches", params={"limit": 500}).status_code == 200
    assert client.get("/searches", params={"status": "sleeping"}).status_code == 422
    response = client.get("/searches", params={"cursor": "not-a-cursor"})
    assert response.status_code == 400
    assert "invalid cursor 'not-a-cursor'" in response.json()["detail"]


# ---------------------------------------------------------------------------------- genotype, epochs


def test_genotype_is_404_before_the_first_epoch_then_latest_or_by_epoch(
    client: TestClient, record_epochs
) -> None:
    search_id = create(client)["id"]
    response = client.get(f"/searches/{search_id}/genotype")
    assert response.status_code == 404
    assert "no genotype yet" in response.json()["detail"]
    assert client.get(f"/searches/{search_id}/genotype.svg").status_code == 404

    record_epochs(search_id, 3)
    assert client.get(f"/searches/{search_id}/genotype").json() == epoch_genotype(3)
    assert client.get(f"/searches/{search_id}/genotype", params={"epoch": 2}).json() == epoch_genotype(2)
    missing = client.get(f"/searches/{search_id}/genotype", params={"epoch": 4})
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"search '{search_id}' has no epoch 4 (finished epochs: 3)"
    assert client.get(f"/searches/{search_id}/genotype", params={"epoch": 0}).status_code == 422
    assert client.get(f"/searches/{search_id}/genotype", params={"epoch": 10**30}).status_code == 422

    svg = client.get(f"/searches/{search_id}/genotype.svg", params={"epoch": 1})
    assert svg.status_code == 200
    assert svg.headers["content-type"].startswith("image/svg+xml")
    assert svg.text.startswith("<svg") and "sep_conv_5x5" in svg.text and "reduction cell" in svg.text

    search = client.get(f"/searches/{search_id}").json()
    assert search["epoch"] == 3 and search["genotype"] == epoch_genotype(3)
    assert search["best_valid_acc"] == pytest.approx(0.27)


def test_epochs_are_listed_in_order_with_cursor_pages(client: TestClient, record_epochs) -> None:
    search_id = create(client)["id"]
    assert client.get(f"/searches/{search_id}/epochs").json() == {"items": [], "next_cursor": None}
    record_epochs(search_id, [2, 1, 3])

    everything = client.get(f"/searches/{search_id}/epochs").json()
    assert [item["epoch"] for item in everything["items"]] == [1, 2, 3]
    assert everything["next_cursor"] is None
    first = everything["items"][0]
    assert set(first) == {
        "epoch",
        "train_loss",
        "train_acc",
        "valid_loss",
        "valid_acc",
        "lr",
        "seconds",
        "genotype",
        "alphas",
        "skip_connections",
        "parameter_free_ops",
        "alpha_entropy",
        "hessian_eigenvalue",
        "cost",
        "method",
        "schedule",
        "created_at",
    }
    assert first["train_loss"] == 2.0 and first["genotype"] == epoch_genotype(1)

    page = client.get(f"/searches/{search_id}/epochs", params={"limit": 2}).json()
    assert [item["epoch"] for item in page["items"]] == [1, 2]
    rest = client.get(f"/searches/{search_id}/epochs", params={"cursor": page["next_cursor"]}).json()
    assert [item["epoch"] for item in rest["items"]] == [3] and rest["next_cursor"] is None
    for bad_cursor in ("x1", "9" * 30):
        response = client.get(f"/searches/{search_id}/epochs", params={"cursor": bad_cursor})
        assert response.status_code == 400, bad_cursor
        assert response.json()["detail"].startswith("invalid cursor")


def test_epoch_pages_built_once_still_show_new_epochs_and_no_deleted_search(
    client: TestClient, record_epochs
) -> None:
    search_id = create(client)["id"]
    record_epochs(search_id, 2)
    first = client.get(f"/searches/{search_id}/epochs").json()  # epochs 1 and 2 now cached
    record_epochs(search_id, [3], status="succeeded")
    again = client.get(f"/searches/{search_id}/epochs").json()
    assert again["items"][:2] == first["items"]
    assert [item["epoch"] for item in again["items"]] == [1, 2, 3]
    assert again["items"][2]["genotype"] == epoch_genotype(3)
    assert client.delete(f"/searches/{search_id}").status_code == 204
    assert client.get(f"/searches/{search_id}/epochs").status_code == 404


def test_the_epoch_cache_keeps_the_most_recently_read_searches() -> None:
    from app.services.epoch_pages import EpochJsonCache

    with pytest.raises(ValueError, match="max_searches"):
        EpochJsonCache(max_searches=0)
    cache = EpochJsonCache(max_searches=2)
    cache.put("a", {1: b"{}"})
    cache.put("b", {2: b"{}"})
    assert cache.get("a", [1]) == {1: b"{}"}  # read: "b" is now the least recent
    cache.put("c", {3: b"{}"})
    assert cache.get("b", [2]) == {} and cache.get("a", [1, 9]) == {1: b"{}"}


# ------------------------------------------------------------------------------------------- cancel


def test_cancel_a_queued_search_cancels_it_at_once(client: TestClient, db_session: Session) -> None:
    search_id = create(client)["id"]
    response = client.post(f"/searches/{search_id}/cancel")
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "cancelled" and body["finished_at"] is not None
    again = client.post(f"/searches/{search_id}/cancel")  # idempotent
    assert again.status_code == 202 and again.json() == body
    row = db_session.get(Search, search_id)
    assert row is not None and row.cancel_requested and row.status == "cancelled"


def test_cancel_a_running_search_raises_the_flag_the_worker_polls(
    client: TestClient, api_settings: Settings, set_status
) -> None:
    search_id = create(client)["id"]
    set_status(search_id, "running")
    response = client.post(f"/searches/{search_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelling"
    flags = redis.Redis.from_url(api_settings.redis_url, decode_responses=True)
    key = f"{api_settings.redis_prefix}:cancel:{search_id}"
    try:
        assert flags.get(key) == "1"
        assert flags.ttl(key) > 0
        flags.delete(key)
        again = client.post(f"/searches/{search_id}/cancel")
        assert again.status_code == 202 and again.json()["status"] == "cancelling"
        assert flags.get(key) == "1"  # set again: a retried cancel reaches the worker
    finally:
        flags.delete(key)
        flags.close()


def test_cancel_a_queued_search_a_worker_has_leased_asks_the_worker_to_stop(
    client: TestClient, api_settings: Settings, db_session: Session
) -> None:
    """A worker took the task (lease held) but its `running` event is not ingested yet: the row still
    reads queued, yet the search must be stopped by the worker, not just marked cancelled."""
    from datetime import timedelta

    from app.db import utcnow

    leased_id, expired_id = create(client)["id"], create(client)["id"]
    for search_id, expires in [(leased_id, timedelta(seconds=60)), (expired_id, timedelta(seconds=-1))]:
        row = db_session.get(Search, search_id)
        row.lease_owner, row.lease_expires_at = "worker-1", utcnow() + expires
    db_session.commit()

    leased = client.post(f"/searches/{leased_id}/cancel")
    assert leased.status_code == 202 and leased.json()["status"] == "cancelling"
    flags = redis.Redis.from_url(api_settings.redis_url)
    try:
        assert flags.exists(f"{api_settings.redis_prefix}:cancel:{leased_id}")
    finally:
        flags.delete(f"{api_settings.redis_prefix}:cancel:{leased_id}")
        flags.close()
    # A lease that has run out belongs to no live worker: cancelled at once.
    expired = client.post(f"/searches/{expired_id}/cancel")
    assert expired.status_code == 202 and expired.json()["status"] == "cancelled"


def test_cancel_a_running_search_while_redis_is_down_still_records_it(
    client: TestClient, api_settings: Settings, set_status, db_session: Session, auth_headers: dict[str, str]
) -> None:
    """The worker also polls the row's cancel_requested, so the cancel is accepted without Redis."""
    search_id = create(client)["id"]
    set_status(search_id, "running")
    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as offline:
        response = offline.post(f"/searches/{search_id}/cancel")
    assert response.status_code == 202
    assert response.json()["status"] == "cancelling"
    db_session.expire_all()
    assert db_session.get(Search, search_id).cancel_requested


@pytest.mark.parametrize("finished", ["succeeded", "failed"])
def test_cancel_a_finished_search_is_409(client: TestClient, set_status, finished: str) -> None:
    search_id = create(client)["id"]
    set_status(search_id, finished)
    response = client.post(f"/searches/{search_id}/cancel")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"search '{search_id}' already finished with status '{finished}'; it cannot be cancelled"
    )
    assert client.get(f"/searches/{search_id}").json()["status"] == finished


# ------------------------------------------------------------------------------------------- delete


@pytest.mark.parametrize("unfinished", ["queued", "running", "cancelling"])
def test_delete_refuses_a_search_that_may_still_run(client: TestClient, set_status, unfinished: str) -> None:
    search_id = create(client)["id"]
    set_status(search_id, unfinished)
    response = client.delete(f"/searches/{search_id}")
    assert response.status_code == 409
    assert f"is {unfinished}" in response.json()["detail"]
    assert client.get(f"/searches/{search_id}").status_code == 200


def test_delete_removes_a_finished_search_its_epochs_and_artifacts(
    client: TestClient, api_settings: Settings, record_epochs, db_session: Session
) -> None:
    search_id = create(client)["id"]
    other_id = create(client)["id"]
    record_epochs(search_id, 2, status="succeeded")
    record_epochs(other_id, 1)
    artifacts: Path = api_settings.artifacts_path / "searches" / search_id
    artifacts.mkdir(parents=True)
    (artifacts / "checkpoint.pt").write_bytes(b"weights")

    response = client.delete(f"/searches/{search_id}")
    assert response.status_code == 204
    assert client.get(f"/searches/{search_id}").status_code == 404
    assert not artifacts.exists()
    db_session.expire_all()
    assert db_session.query(SearchEpoch).filter_by(search_id=search_id).count() == 0
    assert db_session.query(SearchEpoch).filter_by(search_id=other_id).count() == 1
    assert client.delete(f"/searches/{search_id}").status_code == 404


def test_the_accepted_spec_is_what_the_search_engine_reads(client: TestClient) -> None:
    """The worker runs `SearchConfig.from_spec(spec)`: same sections, names and defaults."""
    from darts_core.search.loop import SearchConfig

    defaults = create(client)["spec"]
    engine_view = SearchConfig.from_spec(defaults).to_spec()
    assert engine_view == {key: value for key, value in defaults.items() if key not in ("name", "dataset")}

    custom = create(
        client,
        {
            "dataset": {"name": "digits"},
            "search_space": {"primitives": ["none", "sep_conv_3x3", "skip_connect"], "internal_nodes": 3},
            "network": {"cells": 5, "init_channels": 8, "stem_multiplier": 2},
            "training": {"epochs": 4, "order": "second", "weight_lr": 0.05, "grad_clip": 1.0, "seed": 3},
            "resources": {"device": "cpu"},
        },
    )["spec"]
    engine_view = SearchConfig.from_spec(custom).to_spec()
    assert engine_view == {key: value for key, value in custom.items() if key not in ("name", "dataset")}


def test_list_pages_break_created_at_ties_by_id(
    client: TestClient, db_session: Session, api_owner: str
) -> None:
    """Searches created in the same instant are neither skipped nor repeated across pages."""
    from datetime import UTC, datetime

    instant = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    ids = [f"00000000-0000-4000-8000-00000000000{digit}" for digit in range(5)]
    for search_id in ids:
        db_session.add(
            Search(
                id=search_id,
                name="tie",
                owner=api_owner,
                status="queued",
                spec={"dataset": {"name": "digits"}},
                dataset_ref="builtin:digits",
                created_at=instant,
                epochs=1,
            )
        )
    db_session.commit()
    seen, cursor = [], None
    while True:
        params = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/searches", params=params).json()
        seen.extend(item["id"] for item in page["items"])
        assert all(item["created_at"].startswith("2026-01-02T03:04:05.678901") for item in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_the_spec_schema_shows_the_op_names_and_the_bounds(client: TestClient) -> None:
    """The OpenAPI schema derives from darts_core's models: the op enum and the limits appear there."""
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    primitives = schemas["SearchSpaceConfig"]["properties"]["primitives"]
    assert primitives["items"]["enum"] == list(DARTS_OP_NAMES)
    assert primitives["maxItems"] == len(DARTS_OP_NAMES) and primitives["minItems"] == 2
    assert schemas["SyntheticDatasetSpec"]["properties"]["channels"]["maximum"] == 64
    assert schemas["SearchSpec"]["properties"]["name"]["anyOf"][0]["maxLength"] == 200


def test_a_generated_name_fits_in_200_characters(client: TestClient) -> None:
    """'<dataset name> search' for an upload whose name has the longest allowed length (200)."""
    files = {"file": ("long.npz", small_images())}
    uploaded = client.post("/datasets", files=files, data={"name": "n" * 200})
    assert uploaded.status_code == 201, uploaded.text
    search = create(client, {"dataset": {"id": uploaded.json()["id"]}})
    assert search["name"] == "n" * 193 + " search" and len(search["name"]) == 200


def test_a_spec_may_lower_the_services_time_limit_but_not_raise_it(client: TestClient) -> None:
    app = client.app
    app.state.settings = app.state.settings.model_copy(update={"search_time_limit": 600})
    base = {"dataset": {"name": "digits"}, "training": {"epochs": 1}}
    too_long = client.post("/searches", json={**base, "resources": {"time_limit_seconds": 601}})
    assert too_long.status_code == 422, too_long.text
    error = too_long.json()["detail"][0]
    assert error["loc"] == ["body", "resources", "time_limit_seconds"]
    assert "SEARCH_TIME_LIMIT" in error["msg"]
    assert client.get("/searches").json()["items"] == []
    lower = client.post("/searches", json={**base, "resources": {"time_limit_seconds": 60}})
    assert lower.status_code == 201, lower.text
    assert lower.json()["spec"]["resources"]["time_limit_seconds"] == 60


def test_the_method_section_is_in_the_schema_and_bad_sections_are_422_naming_the_field(
    client: TestClient,
) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    method = schemas["SearchSpec"]["properties"]["method"]
    assert set(method["discriminator"]["mapping"]) == set(METHOD_NAMES)
    assert schemas["GdasMethod"]["properties"]["tau_max"]["exclusiveMinimum"] == 0.0

    base = {"dataset": {"name": "digits"}, "training": {"epochs": 1}}
    bounded = client.post("/searches", json={**base, "method": {"name": "gdas", "tau_min": -1}})
    assert "method.gdas.tau_min: Input should be greater than 0" in _error_messages(bounded)
    clash = client.post(
        "/searches", json={**base, "method": {"name": "gdas"}, "search_space": {"partial_channels": 2}}
    )
    assert clash.status_code == 422, clash.text
    assert "method.name 'gdas' does not compose with search_space.partial_channels (2)" in clash.text
    assert client.get("/searches").json()["items"] == []
    accepted = create(client, {**base, "method": {"name": "gdas", "tau_max": 5.0}})
    assert accepted["spec"]["method"] == {"name": "gdas", "tau_max": 5.0, "tau_min": 0.1}
