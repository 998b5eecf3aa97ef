"""An image folder from upload to retraining through the service: a generated CIFAR-shaped folder (2,000
PNGs of 32 x 32, 10 classes: a template per class plus noise) is uploaded as a `.tar.gz`, a tiny search
and a tiny retraining on it succeed with a real worker, and the dataset the worker loads costs about its
uint8 size in memory."""

from __future__ import annotations

import io
import tarfile
import tracemalloc
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session, sessionmaker

from app.models import Search
from app.settings import Settings

from .conftest import wait_until

# A flow run: once, in the SQLite pass (test_dataset_archives covers the route on both backends).
pytestmark = pytest.mark.once

CLASSES, PER_CLASS, TEST_PER_CLASS, SIDE = 10, 160, 40, 32


def cifar_shaped_tar_gz() -> bytes:
    """`cifar/train/class<k>/<i>.png` and `cifar/test/...`: class templates plus Gaussian noise."""
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 256, size=(CLASSES, SIDE, SIDE, 3))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for split, count in (("train", PER_CLASS), ("test", TEST_PER_CLASS)):
            for label in range(CLASSES):
                for index in range(count):
                    pixels = templates[label] + rng.normal(0.0, 40.0, size=(SIDE, SIDE, 3))
                    image = io.BytesIO()
                    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(image, "PNG")
                    info = tarfile.TarInfo(f"cifar/{split}/class{label}/{index}.png")
                    info.size = image.tell()
                    archive.addfile(info, io.BytesIO(image.getvalue()))
    return buffer.getvalue()


def finished(api: TestClient, collection: str, job_id: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        job = api.get(f"/{collection}/{job_id}").json()
        return job if job["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(done, 300, f"{collection} {job_id} to finish", interval=0.2)


def test_a_cifar_shaped_folder_is_uploaded_searched_and_retrained(
    api: TestClient,
    running_worker,
    stack_settings: Settings,
    session_factory: sessionmaker[Session],
) -> None:
    from app.main import create_app
    from darts_core.data.registry import load_dataset
    from worker.job_run import resolve_dataset

    # The suite's upload cap is 256 KiB; this archive is about 6 MB (noisy PNGs hardly compress).
    roomy = stack_settings.model_copy(
        update={"max_upload_bytes": 64 * 2**20, "max_dataset_bytes_per_owner": 256 * 2**20}
    )
    with TestClient(create_app(roomy, run_ingester=False), headers=dict(api.headers)) as uploader:
        uploaded = uploader.post(
            "/datasets",
            params={"filename": "cifar.tar.gz"},
            content=cifar_shaped_tar_gz(),
            headers={"content-type": "application/octet-stream"},
        )
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    names = [f"class{label}" for label in range(CLASSES)]
    assert dataset["class_names"] == names and dataset["skipped"] == {"count": 0, "first": []}
    assert dataset["class_counts"] == {name: PER_CLASS + TEST_PER_CLASS for name in names}
    assert (dataset["num_samples"], dataset["channels"], dataset["height"], dataset["width"]) == (
        CLASSES * (PER_CLASS + TEST_PER_CLASS), 3, SIDE, SIDE,
    )

    spec = {
        "dataset": {"id": dataset["id"]},
        "search_space": {"primitives": ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"],
                         "internal_nodes": 2},
        "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
        "training": {"epochs": 1, "batch_size": 64},
        "resources": {"device": "cpu"},
    }
    created = api.post("/searches", json=spec)
    assert created.status_code == 201, created.text
    search = finished(api, "searches", created.json()["id"])
    assert search["status"] == "succeeded", search["error"]
    assert search["class_names"] == names and search["genotype"] is not None

    training_spec = {
        "search_id": search["id"],
        "network": {"cells": 2, "init_channels": 4},
        "training": {"epochs": 1, "batch_size": 64},
        "resources": {"device": "cpu"},
    }
    created = api.post("/trainings", json=training_spec)
    assert created.status_code == 201, created.text
    training = finished(api, "trainings", created.json()["id"])
    assert training["status"] == "succeeded", training["error"]
    assert training["class_names"] == names and training["test_accuracy"] is not None
    print(f"\nfolder flow: search valid {search['best_valid_acc']}, test {training['test_accuracy']}")

    # The worker's memory for the dataset: loaded as the worker loads it, traced (numpy's allocations).
    with session_factory() as session:
        dataset_spec = resolve_dataset(stack_settings, session, session.get(Search, search["id"]))
    uint8_bytes = CLASSES * (PER_CLASS + TEST_PER_CLASS) * 3 * SIDE * SIDE
    tracemalloc.start()
    try:
        loaded = load_dataset(dataset_spec)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"dataset in the worker: {held} bytes held ({held / uint8_bytes:.3f}x its uint8 size), "
          f"{peak} at the peak of loading ({peak / uint8_bytes:.2f}x)")
    assert str(loaded.x_train.dtype) == "torch.uint8" and str(loaded.x_test.dtype) == "torch.uint8"
    stored = loaded.x_train.numel() + loaded.x_test.numel()
    assert stored == uint8_bytes
    assert held <= 1.2 * uint8_bytes
