"""Admission control against a running API: `POST /searches/estimate` and the 422 of `POST /searches`."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.main import create_app
from app.models import Search
from app.settings import Settings, physical_memory_bytes
from darts_core.estimate import count_weights

HUGE = {
    "dataset": {"name": "digits"},
    "network": {"cells": 64, "init_channels": 512},
    "search_space": {"internal_nodes": 8},
}


def test_the_estimate_gives_the_exact_weights_and_creates_nothing(
    client: TestClient, api_settings: Settings, db_session: Session
) -> None:
    response = client.post("/searches/estimate", json={"dataset": {"name": "digits"}})
    assert response.status_code == 200, response.text
    estimate = response.json()
    assert (estimate["weights"], estimate["arch_weights"]) == count_weights(1, 10)
    assert estimate["limit_bytes"] == api_settings.worker_memory_bytes
    assert estimate["fits"] is True and estimate["lower"] == []
    assert estimate["peak_memory_bytes"] == estimate["step_memory_bytes"] + estimate["dataset_bytes"]
    assert db_session.query(Search).count() == 0


def test_the_default_limit_is_most_of_this_machines_memory() -> None:
    assert Settings().worker_memory_bytes == int(0.8 * physical_memory_bytes())


def test_a_search_too_large_for_a_worker_is_422_naming_estimate_limit_and_fields(
    client: TestClient, db_session: Session
) -> None:
    estimate = client.post("/searches/estimate", json=HUGE).json()
    assert estimate["fits"] is False and estimate["weights"] > 10**10
    assert estimate["lower"][:3] == ["training.batch_size", "network.init_channels", "network.cells"]

    response = client.post("/searches", json=HUGE)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["type"] == "does_not_fit"
    assert str(estimate["peak_memory_bytes"]) in error["msg"] and str(estimate["limit_bytes"]) in error["msg"]
    assert "WORKER_MEMORY_BYTES" in error["msg"] and "lower training.batch_size" in error["msg"]
    assert error["ctx"]["peak_memory_bytes"] == estimate["peak_memory_bytes"]
    assert db_session.query(Search).count() == 0


def test_the_limit_is_the_setting(
    api_settings: Settings, client: TestClient, db_session: Session, auth_headers: dict[str, str]
) -> None:
    spec = {
        "dataset": {"name": "synthetic", "num_samples": 64, "image_size": 12},
        "training": {"batch_size": 8},
    }
    peak = client.post("/searches/estimate", json=spec).json()["peak_memory_bytes"]
    for limit, expected in ((peak - 1, 422), (peak, 201)):
        settings = api_settings.model_copy(update={"worker_memory_bytes": limit})
        with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as limited:
            assert limited.post("/searches/estimate", json=spec).json()["fits"] is (expected == 201)
            assert limited.post("/searches", json=spec).status_code == expected
    assert db_session.query(Search).count() == 1


def test_an_uploaded_dataset_is_estimated_with_its_own_shape(client: TestClient) -> None:
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((30, 20, 24, 3), dtype=np.uint8), y=np.arange(30) % 3)
    dataset_id = client.post("/datasets", files={"file": ("d.npz", buffer.getvalue())}).json()["id"]
    estimate = client.post("/searches/estimate", json={"dataset": {"id": dataset_id}}).json()
    assert (estimate["weights"], estimate["arch_weights"]) == count_weights(3, 3)
    assert estimate["dataset_bytes"] == 2 * 4 * 30 * 3 * 20 * 24
    unknown = client.post("/searches/estimate", json={"dataset": {"id": "nope"}})
    assert unknown.status_code == 422 and unknown.json()["detail"][0]["type"] == "unknown_dataset"


def test_a_budget_no_genotype_can_meet_is_422_naming_the_field_and_the_minimum(
    client: TestClient, db_session: Session
) -> None:
    from darts_core.search.budget import cost_table_for
    from darts_core.spec.search_spec import SearchConfig

    spec = {"dataset": {"name": "digits"}, "constraints": {"max_parameters": 1000}}
    table = cost_table_for(SearchConfig.from_spec(spec), (1, 8, 8), 10)
    minimum = round(table.cost(table.cheapest())[0])
    response = client.post("/searches", json=spec)
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["type"] == "budget_infeasible"
    assert error["loc"] == ["body", "constraints", "max_parameters"]
    assert f"at least {minimum}" in error["msg"]
    assert db_session.query(Search).count() == 0
    spec["constraints"]["max_parameters"] = minimum
    assert client.post("/searches", json=spec).status_code == 201
    spec["constraints"] = {"max_multiply_adds": 0}
    [error] = client.post("/searches", json=spec).json()["detail"]
    assert error["loc"][-2:] == ["constraints", "max_multiply_adds"]  # pydantic's own bound: >= 1


SMALL = {
    "dataset": {"name": "synthetic", "num_samples": 64, "image_size": 12},
    "training": {"batch_size": 8},
}


def _with_device(device: str) -> dict:
    return {**SMALL, "resources": {"device": device}}


def test_a_cuda_job_is_admitted_by_the_gpu_memory_its_workers_report(
    api_settings: Settings, auth_headers: dict[str, str], client: TestClient, db_session: Session
) -> None:
    """A GPU worker's heartbeat (as worker/health.py writes it) names its GPU and total memory: a `cuda`
    job, and an `auto` one while such a worker is up, is compared with the smallest GPU less the CUDA
    context's margin, and the 422 names that GPU memory; a `cpu` job still with WORKER_MEMORY_BYTES."""
    import redis

    from app.services.admission import CUDA_CONTEXT_BYTES
    from app.worker_heartbeat import WorkerDevice, encode_heartbeat, heartbeat_key

    settings = api_settings.model_copy(update={"redis_prefix": f"{api_settings.redis_prefix}-gpu"})
    peak = client.post("/searches/estimate", json=_with_device("cuda")).json()["peak_memory_bytes"]
    small_gpu = peak + CUDA_CONTEXT_BYTES - 1  # one byte short
    beats = {
        "gpu-small@host": WorkerDevice("gpu-small@host", "cuda", "Fake GPU", small_gpu),
        "gpu-big@host": WorkerDevice("gpu-big@host", "cuda", "Fake GPU", 80 * 2**30),
        "cpu@host": WorkerDevice("cpu@host", "cpu"),
    }
    store = redis.Redis.from_url(settings.redis_url or "")
    try:
        for hostname, device in beats.items():
            store.set(heartbeat_key(settings.redis_prefix, hostname), encode_heartbeat(1.0, device), ex=60)
        store.set(heartbeat_key(settings.redis_prefix, "old@host"), "1700000000.000", ex=60)  # no device
        with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as api:
            for device in ("cuda", "auto"):
                estimate = api.post("/searches/estimate", json=_with_device(device)).json()
                assert estimate["limit_bytes"] == small_gpu - CUDA_CONTEXT_BYTES == peak - 1
                assert estimate["limit_device"] == "cuda" and estimate["fits"] is False
                assert "'gpu-small@host'" in estimate["limit_source"]
                refused = api.post("/searches", json=_with_device(device))
                assert refused.status_code == 422
                [error] = refused.json()["detail"]
                assert error["type"] == "does_not_fit"
                assert "GPU memory of worker 'gpu-small@host'" in error["msg"]
                assert "WORKER_MEMORY_BYTES" not in error["msg"] and str(peak - 1) in error["msg"]
            on_cpu = api.post("/searches/estimate", json=_with_device("cpu")).json()
            assert (on_cpu["limit_bytes"], on_cpu["limit_device"]) == (settings.worker_memory_bytes, "cpu")
            assert on_cpu["limit_source"] == "WORKER_MEMORY_BYTES"
            store.delete(heartbeat_key(settings.redis_prefix, "gpu-small@host"))  # that worker went away
            assert api.post("/searches", json=_with_device("cuda")).status_code == 201
    finally:
        for hostname in (*beats, "old@host"):
            store.delete(heartbeat_key(settings.redis_prefix, hostname))
        store.close()
    assert db_session.query(Search).count() == 1


def test_with_no_gpu_worker_up_a_cuda_job_is_compared_with_worker_gpu_memory_bytes(
    api_settings: Settings, auth_headers: dict[str, str], client: TestClient
) -> None:
    settings = api_settings.model_copy(update={"redis_prefix": f"{api_settings.redis_prefix}-nogpu"})
    peak = client.post("/searches/estimate", json=SMALL).json()["peak_memory_bytes"]
    unset = create_app(settings, run_ingester=False)
    with TestClient(unset, headers=auth_headers) as api:
        cuda = api.post("/searches/estimate", json=_with_device("cuda")).json()
        assert (cuda["limit_bytes"], cuda["limit_device"]) == (settings.worker_memory_bytes, "cuda")
        assert "WORKER_GPU_MEMORY_BYTES is unset" in cuda["limit_source"]
        assert api.post("/searches/estimate", json=SMALL).json()["limit_device"] == "cpu"  # auto, no GPU
    gpu_set = settings.model_copy(update={"worker_gpu_memory_bytes": peak - 1})
    with TestClient(create_app(gpu_set, run_ingester=False), headers=auth_headers) as api:
        for device in ("cuda", "auto"):
            refused = api.post("/searches", json=_with_device(device))
            assert refused.status_code == 422
            [error] = refused.json()["detail"]
            assert "WORKER_GPU_MEMORY_BYTES (GPU memory; no GPU worker is up)" in error["msg"]
            assert error["ctx"]["limit_bytes"] == peak - 1 and error["ctx"]["limit_device"] == "cuda"
        assert api.post("/searches/estimate", json=_with_device("cpu")).json()["fits"] is True
