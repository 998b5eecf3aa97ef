"""Bad input against a running API: body caps, streamed uploads, hostile .npz files, NUL, hosts, CSP,
and the event loop staying free while the worst bodies are validated."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from conftest import write_npz_of_zeros
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Dataset, Search
from app.settings import Settings

DIGITS = {"dataset": {"name": "digits"}}


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def stored_uploads(settings: Settings) -> list[Path]:
    directory = settings.artifacts_path / "datasets"
    return sorted(directory.iterdir()) if directory.exists() else []


def multipart_chunks(data: bytes, boundary: str = "darts-boundary", piece: int = 32 * 1024):
    """A multipart/form-data body with one `file` part, as a generator: httpx sends it chunked."""
    yield (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"d.npz\"\r\n"
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for start in range(0, len(data), piece):
        yield data[start : start + piece]
    yield f"\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nstreamed".encode()
    yield f"\r\n--{boundary}--\r\n".encode()


# --------------------------------------------------------------------------------------- body caps


def test_json_bodies_over_max_body_bytes_are_413_before_parsing_declared_or_chunked(
    serve, auth_headers: dict[str, str], api_settings: Settings, db_session: Session
) -> None:
    server = serve(api_settings.model_copy(update={"max_body_bytes": 4096}))
    body = b'{"dataset": {"name": "digits"}, "name": "' + b"n" * 8192 + b'"}'
    expected = {"detail": "request body larger than the limit of 4096 bytes (MAX_BODY_BYTES)"}
    with httpx.Client(base_url=server.url, headers=auth_headers, timeout=60) as http:
        declared = http.post("/searches", content=body, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and declared.json() == expected

        def chunked():  # no Content-Length: counted as it arrives
            for start in range(0, len(body), 1024):
                yield body[start : start + 1024]

        streamed = http.post("/searches", content=chunked(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and streamed.json() == expected
        estimate = http.post("/searches/estimate", content=body, headers={"content-type": "application/json"})
        assert estimate.status_code == 413
        assert http.post("/searches", json=DIGITS).status_code == 201  # a small body still passes
    assert db_session.query(Search).count() == 1


def test_a_chunked_multipart_upload_streams_to_disk_and_is_capped_while_it_streams(
    serve, auth_headers: dict[str, str], api_settings: Settings, db_session: Session
) -> None:
    server = serve(api_settings)
    boundary = "darts-boundary"
    headers = {"content-type": f"multipart/form-data; boundary={boundary}"}
    rng = np.random.default_rng(0)
    good = npz_bytes(x=rng.integers(0, 256, (20, 8, 8, 3), dtype=np.uint8), y=np.arange(20) % 2)
    too_big = rng.integers(0, 256, api_settings.max_upload_bytes + 1, dtype=np.uint8).tobytes()
    before = stored_uploads(api_settings)
    with httpx.Client(base_url=server.url, headers=auth_headers, timeout=60) as http:
        accepted = http.post("/datasets", content=multipart_chunks(good, boundary), headers=headers)
        assert accepted.status_code == 201, accepted.text
        assert accepted.json()["name"] == "streamed" and accepted.json()["filename"] == "d.npz"
        assert accepted.json()["num_samples"] == 20 and accepted.json()["channels"] == 3

        refused = http.post("/datasets", content=multipart_chunks(too_big, boundary), headers=headers)
        assert refused.status_code == 413
        assert refused.json()["detail"].endswith("(MAX_UPLOAD_BYTES)")
    assert len(stored_uploads(api_settings)) == len(before) + 1  # only the accepted file is kept
    assert db_session.query(Dataset).count() == 1


# --------------------------------------------------------------------------------------- hostile files


def test_a_zip_bomb_of_zeros_is_refused_uninflated(
    serve, auth_headers: dict[str, str], api_settings: Settings, tmp_path: Path, db_session: Session
) -> None:
    bomb = tmp_path / "zeros.npz"
    write_npz_of_zeros(bomb, (10000, 3, 128, 128))
    assert bomb.stat().st_size < 1024 * 1024
    server = serve(api_settings.model_copy(update={"max_upload_bytes": 2 * 1024 * 1024}))
    with httpx.Client(base_url=server.url, headers=auth_headers, timeout=120) as http:
        response = http.post(
            "/datasets", params={"filename": "zeros.npz"}, content=bomb.read_bytes(),
            headers={"content-type": "application/octet-stream"},
        )
    assert response.status_code == 422, response.text
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"]
    assert "x: 491520000 values (10000 x 3 x 128 x 128) exceed the limit of 268435456" in error["msg"]
    assert db_session.query(Dataset).count() == 0


def test_a_label_beyond_max_classes_and_values_beyond_float32_are_refused(client: TestClient) -> None:
    x = np.zeros((4, 8, 8), dtype=np.uint8)
    huge_label = client.post(
        "/datasets", files={"file": ("l.npz", npz_bytes(x=x, y=np.array([0, 1, 2, 50_000_000])))}
    )
    assert huge_label.status_code == 422
    assert "y: label 50000000 out of range: at most 1000 classes" in huge_label.json()["detail"][0]["msg"]

    beyond = np.zeros((4, 8, 8), dtype=np.float64)
    beyond[1, 2, 3] = 1e300
    payload = npz_bytes(x=beyond, y=np.array([0, 1] * 2))
    response = client.post("/datasets", files={"file": ("f.npz", payload)})
    assert response.status_code == 422
    assert "beyond float32's range" in response.json()["detail"][0]["msg"]


def test_dataset_errors_carry_no_server_path_or_exception_text(
    client: TestClient, api_settings: Settings
) -> None:
    for payload in (b"PK\x03\x04 truncated zip", npz_bytes(x=np.array([object()] * 4), y=np.arange(4))):
        response = client.post("/datasets", files={"file": ("bad.npz", payload)})
        assert response.status_code == 422
        text = response.text
        assert str(api_settings.artifacts_path) not in text and "Traceback" not in text
        assert "/" not in response.json()["detail"][0]["msg"]


# --------------------------------------------------------------------------------------- event loop


def test_healthz_answers_while_four_worst_case_uploads_are_being_validated(
    serve, auth_headers: dict[str, str], api_settings: Settings, db_session: Session
) -> None:
    """Validation runs in worker threads: the four block (by a hook) until /healthz has answered, so
    a /healthz that needed the event loop while they ran could never answer."""
    # As large as the cap allows, float32 (every value is read and checked), 8x8 grey images.
    samples = (api_settings.max_upload_bytes - 2048) // (64 * 4 + 8)
    worst = npz_bytes(x=np.ones((samples, 1, 8, 8), dtype=np.float32), y=np.arange(samples) % 10)
    assert len(worst) <= api_settings.max_upload_bytes
    server = serve(api_settings)
    started = threading.Semaphore(0)
    release = threading.Event()
    events: list[str] = []

    def hold() -> None:
        events.append("validation started")
        started.release()
        release.wait(timeout=120)

    server.app.state.before_upload_validation = hold
    responses: list[httpx.Response] = []

    def upload() -> None:
        with httpx.Client(base_url=server.url, headers=auth_headers, timeout=180) as http:
            responses.append(
                http.post(
                    "/datasets", params={"filename": "worst.npz"}, content=worst,
                    headers={"content-type": "application/octet-stream"},
                )
            )
            events.append("upload answered")

    threads = [threading.Thread(target=upload) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(4):
            assert started.acquire(timeout=120), "the validations did not start"
        with httpx.Client(base_url=server.url, headers=auth_headers, timeout=60) as http:
            began = time.perf_counter()
            health = http.get("/healthz")
            latency = time.perf_counter() - began
        events.append("healthz answered")
        assert health.status_code == 200
        print(f"/healthz latency while four uploads are validated: {latency * 1000:.1f} ms")
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=180)
    assert events[:5] == ["validation started"] * 4 + ["healthz answered"]
    assert [r.status_code for r in responses] == [201] * 4
    assert db_session.query(Dataset).count() == 4


# --------------------------------------------------------------------------------------- small contracts


def test_nul_in_a_query_or_path_is_422_naming_it(client: TestClient) -> None:
    response = client.get("/searches", params={"status": "queued", "cursor": "a\x00b"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "cursor"]
    assert client.get("/searches/abc%00def").status_code == 422
    assert client.post("/searches", json={**DIGITS, "name": "x\x00y"}).status_code == 422


def test_cursors_empty_means_none_and_unicode_digits_are_refused(client: TestClient) -> None:
    search_id = client.post("/searches", json=DIGITS).json()["id"]
    assert client.get("/searches", params={"cursor": ""}).json()["items"][0]["id"] == search_id
    assert client.get("/datasets", params={"cursor": ""}).status_code == 200
    assert client.get(f"/searches/{search_id}/epochs", params={"cursor": ""}).status_code == 200
    superscript = client.get(f"/searches/{search_id}/epochs?cursor=%C2%B2")
    assert superscript.status_code == 400 and "invalid cursor" in superscript.json()["detail"]
    events = client.get(f"/searches/{search_id}/events", headers={"Last-Event-ID": "\u00b2".encode()})
    assert events.status_code == 422


def test_405_lists_every_allowed_method(client: TestClient) -> None:
    response = client.put("/searches")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert client.patch("/searches/some-id").headers["allow"] == "DELETE, GET"


def test_unknown_hosts_are_refused_and_the_page_forbids_inline_script(
    client: TestClient, api_settings: Settings
) -> None:
    assert client.get("/healthz", headers={"host": "evil.example"}).status_code == 400
    assert client.get("/healthz", headers={"host": "localhost:8000"}).status_code == 200
    page = client.get("/")
    policy = page.headers["content-security-policy"]
    script_sources = policy.split("script-src")[1].split(";")[0]
    assert script_sources.strip() == "'self'"
    assert "access-control-allow-origin" not in client.get(
        "/healthz", headers={"origin": "http://elsewhere.example"}
    ).headers


def test_metric_labels_take_known_values_only(client: TestClient) -> None:
    client.request("BREW", "/healthz")
    client.get("/searches/some-unknown-id")
    text = client.get("/metrics").text
    assert 'method="other"' in text and "BREW" not in text
    assert 'route="/searches/{search_id}"' in text and "some-unknown-id" not in text


def test_the_broker_503_carries_no_exception_text(
    api_settings: Settings, auth_headers: dict[str, str]
) -> None:
    from app.main import create_app

    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings, run_ingester=False), headers=auth_headers) as offline:
        response = offline.post("/searches", json=DIGITS)
    assert response.status_code == 503
    assert response.json() == {
        "detail": "the task broker (Redis) is unreachable; the search was not created"
    }
