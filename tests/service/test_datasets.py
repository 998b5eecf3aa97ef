"""`/datasets`: .npz uploads (multipart and raw), validation, size cap, listing with the built-ins."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from app.models import Dataset, Search
from app.settings import Settings


def npz_bytes(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def small_images(num_samples: int = 24, num_classes: int = 3) -> bytes:
    """NHWC uint8 colour images, labels 0..num_classes-1."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(num_samples, 8, 6, 3), dtype=np.uint8)
    y = np.arange(num_samples) % num_classes
    return npz_bytes(x=x, y=y)


def stored_uploads(settings: Settings) -> list[Path]:
    directory = settings.artifacts_path / "datasets"
    return sorted(directory.iterdir()) if directory.exists() else []


def test_multipart_upload_is_stored_validated_and_listed(
    client: TestClient, api_settings: Settings, db_session: Session
) -> None:
    before = stored_uploads(api_settings)
    response = client.post(
        "/datasets", files={"file": ("../../faces.npz", small_images(), "application/octet-stream")}
    )
    assert response.status_code == 201, response.text
    dataset = response.json()
    assert dataset["kind"] == "upload" and dataset["name"] == "faces" and dataset["filename"] == "faces.npz"
    assert (dataset["num_samples"], dataset["num_classes"]) == (24, 3)
    assert (dataset["channels"], dataset["height"], dataset["width"]) == (3, 8, 6)
    assert dataset["size_bytes"] == len(small_images())

    stored = Path(db_session.get(Dataset, dataset["id"]).path)
    assert stored == api_settings.artifacts_path / "datasets" / f"{dataset['id']}.npz"
    assert stored.read_bytes() == small_images()
    assert stored_uploads(api_settings) == sorted([*before, stored])

    assert client.get(f"/datasets/{dataset['id']}").json() == dataset
    listed = client.get("/datasets").json()
    assert listed["next_cursor"] is None
    assert [(item["kind"], item["id"]) for item in listed["items"]] == [
        ("builtin", "digits"),
        ("builtin", "synthetic"),
        ("upload", dataset["id"]),
    ]


def test_raw_upload_streams_the_body(client: TestClient) -> None:
    response = client.post(
        "/datasets",
        params={"filename": "raw.npz", "name": "my raw set"},
        content=small_images(num_samples=10, num_classes=2),
        headers={"content-type": "application/octet-stream"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "my raw set"
    assert response.json()["num_classes"] == 2


def test_an_invalid_npz_is_422_with_darts_core_message_and_nothing_kept(
    client: TestClient, api_settings: Settings, db_session: Session
) -> None:
    before = stored_uploads(api_settings)
    missing_labels = npz_bytes(x=np.zeros((4, 8, 8), dtype=np.uint8))
    response = client.post("/datasets", files={"file": ("bad.npz", missing_labels)})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "file"] and error["type"] == "invalid_dataset"
    assert error["msg"].startswith("invalid dataset: ") and "'y'" in error["msg"]

    not_a_zip = client.post("/datasets", files={"file": ("junk.npz", b"this is not a zip archive")})
    assert not_a_zip.status_code == 422
    assert not_a_zip.json()["detail"][0]["msg"].startswith("invalid dataset")

    wrong_suffix = client.post("/datasets", files={"file": ("data.csv", b"1,2,3")})
    assert wrong_suffix.status_code == 422
    assert wrong_suffix.json()["detail"][0]["msg"] == (
        "expected a .npz, .zip, .tar, .tar.gz or .tgz file, got 'data.csv'"
    )

    long_name = client.post("/datasets", files={"file": ("ok.npz", small_images())}, data={"name": "n" * 201})
    assert long_name.status_code == 422
    assert long_name.json()["detail"][0]["msg"] == "name must have 1 to 200 characters"

    empty = client.post("/datasets", files={"file": ("empty.npz", b"")})
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["msg"] == "the uploaded file is empty"

    assert stored_uploads(api_settings) == before
    assert db_session.query(Dataset).count() == 0


def test_an_upload_over_the_limit_is_413_and_nothing_kept(
    client: TestClient, api_settings: Settings, db_session: Session
) -> None:
    before = stored_uploads(api_settings)
    too_big = npz_bytes(
        x=np.zeros((api_settings.max_upload_bytes // 64 + 16, 8, 8), dtype=np.uint8),
        y=np.zeros(api_settings.max_upload_bytes // 64 + 16, dtype=np.int64),
    )
    assert len(too_big) > api_settings.max_upload_bytes
    expected = f"upload larger than the limit of {api_settings.max_upload_bytes} bytes (MAX_UPLOAD_BYTES)"

    multipart = client.post("/datasets", files={"file": ("big.npz", too_big)})
    assert multipart.status_code == 413
    assert multipart.json() == {"detail": expected}

    def chunks():  # no Content-Length: the cap is enforced while the body streams in
        for start in range(0, len(too_big), 64 * 1024):
            yield too_big[start : start + 64 * 1024]

    raw = client.post(
        "/datasets", content=chunks(), headers={"content-type": "application/octet-stream"}
    )
    assert raw.status_code == 413
    assert raw.json() == {"detail": expected}
    assert stored_uploads(api_settings) == before
    assert db_session.query(Dataset).count() == 0


def test_unknown_dataset_is_404_and_builtins_are_readable(client: TestClient) -> None:
    response = client.get("/datasets/nope")
    assert response.status_code == 404
    assert response.json() == {"detail": "dataset 'nope' not found"}
    digits = client.get("/datasets/digits").json()
    assert digits["kind"] == "builtin" and digits["num_classes"] == 10
    assert (digits["channels"], digits["height"], digits["width"]) == (1, 8, 8)
    assert digits["parameters"] == {"test_fraction": 0.2, "seed": 0}


def test_uploads_are_paged_newest_first_after_the_builtins(client: TestClient) -> None:
    ids = []
    for index in range(3):
        response = client.post("/datasets", files={"file": (f"set{index}.npz", small_images())})
        ids.append(response.json()["id"])
    first = client.get("/datasets", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == ["digits", "synthetic", ids[2], ids[1]]
    rest = client.get("/datasets", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]]
    assert rest["next_cursor"] is None


def test_a_search_on_an_uploaded_dataset(client: TestClient, db_session: Session) -> None:
    dataset_id = client.post("/datasets", files={"file": ("mine.npz", small_images())}).json()["id"]
    response = client.post("/searches", json={"dataset": {"id": dataset_id, "layout": "NHWC"}})
    assert response.status_code == 201, response.text
    search = response.json()
    assert search["name"] == "mine search" and search["spec"]["name"] == "mine search"
    assert search["spec"]["dataset"] == {"id": dataset_id, "layout": "NHWC", "test_fraction": 0.2, "seed": 0}
    assert db_session.get(Search, search["id"]).dataset_ref == f"upload:{dataset_id}"


def test_the_worker_loads_an_upload_with_the_split_and_layout_of_the_spec(
    client: TestClient, api_settings: Settings, db_session: Session
) -> None:
    from darts_core.data.registry import load_dataset
    from worker.search_run import resolve_dataset

    dataset_id = client.post("/datasets", files={"file": ("mine.npz", small_images(40, 4))}).json()["id"]
    spec = {"dataset": {"id": dataset_id, "layout": "NHWC", "test_fraction": 0.5, "seed": 3}}
    search_id = client.post("/searches", json=spec).json()["id"]

    dataset_spec = resolve_dataset(api_settings, db_session, db_session.get(Search, search_id))
    assert dataset_spec["name"] == "npz" and "id" not in dataset_spec
    assert (dataset_spec["layout"], dataset_spec["test_fraction"], dataset_spec["seed"]) == ("NHWC", 0.5, 3)
    dataset = load_dataset(dataset_spec)
    assert dataset.in_channels == 3 and dataset.image_size == (8, 6)
    assert len(dataset.y_test) == 20 and len(dataset.y_train) == 20
