"""A study through the whole service on digits, tiny specs: 2 seeds on 2 workers, the selection
trainings, the choice, the final training. Prints the study's wall time against its parts' run times
added up (what running them one after another would take)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from .conftest import WorkerProcess, wait_until

# A search of a few seconds on digits (8x8 images): 3 small cells, 2 internal nodes, 4 primitives.
SEARCH: dict[str, Any] = {
    "dataset": {"name": "digits"},
    "search_space": {
        "primitives": ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"],
        "internal_nodes": 2,
    },
    "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
    "training": {"epochs": 2, "batch_size": 64},
    "resources": {"device": "cpu"},
}
TRAINING: dict[str, Any] = {
    "network": {"cells": 2, "init_channels": 4},
    "training": {"epochs": 1, "batch_size": 64},
    "resources": {"device": "cpu"},
}
STUDY: dict[str, Any] = {
    "name": "digits study",
    "search": SEARCH,
    "seeds": [0, 1],
    "selection": TRAINING,
    "final": {**TRAINING, "training": {"epochs": 2, "batch_size": 64}},
}


def moment(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def wait_study(api: TestClient, study_id: str, timeout: float = 900.0) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        study = api.get(f"/studies/{study_id}").json()
        return study if study["status"] in ("succeeded", "failed", "cancelled") else None

    return wait_until(ended, timeout, f"study {study_id} to end", interval=0.5)


def report(study: dict[str, Any]) -> None:
    print(f"\nstudy {study['id']}: wall time {study['wall_seconds']:.1f} s; its {len(children(study))} parts "
          f"one after another {study['child_seconds']:.1f} s")


def children(study: dict[str, Any]) -> list[dict[str, Any]]:
    stages = study["stages"]
    return [*stages["search"], *stages["selection"], *([stages["final"]] if stages["final"] else [])]


# Runs once (the PostgreSQL pass deselects it); test_study_advance covers the orchestrator on both backends.
pytestmark = pytest.mark.once


@pytest.fixture
def second_worker(stack_env: dict[str, str], tmp_path: Path, running_worker: WorkerProcess):
    process = WorkerProcess(stack_env, tmp_path).start()
    yield process
    process.stop()


def test_a_study_runs_its_seeds_in_parallel_picks_the_best_and_trains_it(
    api: TestClient, running_worker: WorkerProcess, second_worker: WorkerProcess
) -> None:
    response = api.post("/studies", json=STUDY)
    assert response.status_code == 201, response.text
    study = wait_study(api, response.json()["id"])
    report(study)
    assert study["status"] == "succeeded", study["error"]
    searches = study["stages"]["search"]
    assert [(s["seed"], s["status"]) for s in searches] == [(0, "succeeded"), (1, "succeeded")]
    # Both searches ran at the same time, one on each worker.
    starts = [moment(s["started_at"]) for s in searches]
    ends = [moment(s["finished_at"]) for s in searches]
    assert max(starts) < min(ends), (starts, ends)

    selection = study["stages"]["selection"]
    assert [(t["seed"], t["status"]) for t in selection] == [(0, "succeeded"), (1, "succeeded")]
    accuracies = {t["seed"]: t["valid_acc"] for t in selection}
    assert all(acc is not None for acc in accuracies.values())
    best = max(sorted(accuracies), key=lambda seed: accuracies[seed])  # ties: the lower seed
    assert study["chosen_seed"] == best
    assert study["chosen_search_id"] == searches[best]["id"]
    assert [(e["seed"], e["valid_acc"], e["chosen"]) for e in study["selection"]] == [
        (seed, accuracies[seed], seed == best) for seed in (0, 1)
    ]
    final = study["stages"]["final"]
    assert final["status"] == "succeeded" and final["seed"] == best and final["test_accuracy"] is not None
    genotype = api.get(f"/searches/{searches[best]['id']}/genotype").json()
    assert study["chosen_genotype"] == genotype
