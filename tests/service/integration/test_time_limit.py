"""A search past its wall-clock limit stops at the next batch and ends failed, keeping its genotype."""

from __future__ import annotations

from fastapi.testclient import TestClient

from .conftest import finish, submit, tiny_spec, wait_for_status


def test_a_search_past_its_time_limit_ends_failed_with_its_genotype_kept(
    api: TestClient, running_worker
) -> None:
    spec = tiny_spec(epochs=1000, name="limited")
    spec["resources"] = {**spec["resources"], "time_limit_seconds": 12}
    search_id = submit(api, spec)["id"]
    try:
        final = wait_for_status(api, search_id, {"failed", "succeeded", "cancelled"}, timeout=120)
    finally:
        finish(api, search_id)
    assert final["status"] == "failed"
    assert final["error"].startswith("time limit reached: the search ran for its limit of 12 s")
    assert 1 <= final["epoch"] < 1000
    assert final["genotype"] is not None  # the genotype of the last finished epoch is kept
    epochs = api.get(f"/searches/{search_id}/epochs").json()["items"]
    assert [record["epoch"] for record in epochs] == list(range(1, final["epoch"] + 1))
