"""A training from the service, end to end: DARTS_V2 retrained on digits by a real worker reaches the
issue's figure, its epochs stream in, and the downloaded weights load with `darts_core.load_trained`
into a network with the same test accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import wait_until

# A quality run: once, in the SQLite pass (test_trainings covers the routes on both backends).
pytestmark = [pytest.mark.slow, pytest.mark.once]


def _training(api: TestClient, training_id: str) -> dict[str, Any]:
    response = api.get(f"/trainings/{training_id}")
    assert response.status_code == 200, response.text
    return response.json()


def accuracy_of(network: Any, x: Any, y: Any, batch_size: int) -> float:
    """Held-out accuracy of `network` (eval mode) on x: N x C x H x W, y: N."""
    import torch

    network.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            logits = network(x[start : start + batch_size])
            correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum().item())
    return correct / x.shape[0]


def test_darts_v2_on_digits_from_the_service_reaches_097_and_its_weights_load(
    api: TestClient, running_worker, tmp_path: Path
) -> None:
    from darts_core import load_trained
    from darts_core.data.registry import load_dataset
    from darts_core.spec.genotype import DARTS_V2

    # The defaults (TrainingJobConfig): 10 epochs, 16 channels, 5 cells; only the device is pinned.
    body = {"genotype": DARTS_V2.to_darts(), "dataset": {"name": "digits"}, "resources": {"device": "cpu"}}
    created = api.post("/trainings", json=body)
    assert created.status_code == 201, created.text
    training_id = created.json()["id"]
    assert api.get(f"/trainings/{training_id}/weights").status_code == 409

    final = wait_until(
        lambda: (found := _training(api, training_id))["status"] in ("succeeded", "failed", "cancelled")
        and found,
        600,
        f"training {training_id} to finish",
        interval=0.5,
    )
    assert final["status"] == "succeeded", final["error"]
    print(f"\nDARTS_V2 on digits from the service: test {final['test_accuracy']:.4f}, "
          f"valid {final['valid_accuracy']:.4f}, {final['parameters']} parameters, "
          f"{final['multiply_adds']} multiply-adds")
    assert final["test_accuracy"] >= 0.97
    assert final["parameters"] > 0 and final["multiply_adds"] > 0 and final["valid_accuracy"] is not None
    epochs = api.get(f"/trainings/{training_id}/epochs").json()["items"]
    assert [record["epoch"] for record in epochs] == list(range(1, 11))
    assert epochs[-1]["test_acc"] == final["test_accuracy"]

    download = api.get(f"/trainings/{training_id}/weights")
    assert download.status_code == 200
    assert download.headers["content-type"] == "application/octet-stream"
    path = tmp_path / "model.safetensors"
    path.write_bytes(download.content)
    network = load_trained(path)
    dataset = load_dataset(final["spec"]["dataset"])
    batch_size = final["spec"]["training"]["batch_size"]
    assert accuracy_of(network, dataset.x_test, dataset.y_test, batch_size) == final["test_accuracy"]
