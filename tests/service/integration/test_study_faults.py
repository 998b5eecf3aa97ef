"""A study survives the restart of any process: its worker is killed once in each stage (a search, a
selection training, the final training) and the API process (with its ingester, which runs the sweep
and so the orchestrator) once, and the study still completes. Runs once, on the SQLite backend
(marker `faults`), on a stack of its own (tests/service/integration/test_faults.py's)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from app.models import Search, Study, Training

from .conftest import WorkerProcess, wait_until
from .test_faults import FAULT_SWEEP_SECONDS, ApiProcess, FaultStack, _stack, start_worker
from .test_study_flow import SEARCH, TRAINING

pytestmark = [pytest.mark.faults, pytest.mark.slow]

STUDY: dict[str, Any] = {
    "name": "durable study",
    "search": {**SEARCH, "training": {"epochs": 3, "batch_size": 64}},
    "seeds": [0, 1],
    "selection": {**TRAINING, "training": {"epochs": 2, "batch_size": 64}},
    "final": {**TRAINING, "training": {"epochs": 2, "batch_size": 64}},
}


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[FaultStack]:
    # The in-process API answers requests only: the orchestrator runs in the API process the test kills.
    yield from _stack(tmp_path, run_ingester=False)


def running_child(stack: FaultStack, study_id: str, stage: str) -> Search | Training | None:
    """A child of `stage` that a worker holds now, once it has started."""
    model = Search if stage == "searching" else Training
    with stack.factory() as session:
        query = select(model).where(
            model.study_id == study_id, model.study_stage == stage, model.status == "running",
            model.lease_owner.is_not(None),
        )
        return session.scalars(query).first()


def kill_worker_of(stack: FaultStack, tmp_path: Path, study_id: str, stage: str) -> str:
    """SIGKILL the worker running a child of `stage`, start a replacement; returns the child's id."""
    child = wait_until(lambda: running_child(stack, study_id, stage), 300, f"a running child of {stage}",
                       interval=0.05)
    pid = int(str(child.lease_owner).split(":")[1])
    victim: WorkerProcess = next(w for w in stack.workers if w.process and w.process.pid == pid)
    victim.kill()
    start_worker(stack, tmp_path)
    return str(child.id)


def study_row(stack: FaultStack, study_id: str) -> Study:
    with stack.factory() as session:
        study = session.get(Study, study_id)
        assert study is not None
        return study


def test_a_study_completes_through_a_killed_worker_in_each_stage_and_a_killed_api(
    stack: FaultStack, tmp_path: Path
) -> None:
    env = {**stack.env, "SWEEP_INTERVAL_SECONDS": str(FAULT_SWEEP_SECONDS)}
    start_worker(stack, tmp_path)
    start_worker(stack, tmp_path)
    api = ApiProcess(env, tmp_path / "api-1.log")
    apis = [api]
    try:
        api.wait_ready()
        response = stack.api.post("/studies", json=STUDY)
        assert response.status_code == 201, response.text
        study_id = response.json()["id"]

        killed = {"searching": kill_worker_of(stack, tmp_path, study_id, "searching")}
        api.kill()  # the orchestrator's process, while the searches run
        api = ApiProcess(env, tmp_path / "api-2.log")
        apis.append(api)
        api.wait_ready()
        killed["selecting"] = kill_worker_of(stack, tmp_path, study_id, "selecting")
        killed["final"] = kill_worker_of(stack, tmp_path, study_id, "final")

        def ended() -> Study | None:
            row = study_row(stack, study_id)
            return row if row.status in ("succeeded", "failed", "cancelled") else None

        final = wait_until(ended, 600, "the study to end", interval=0.2)
        detail = stack.api.get(f"/studies/{study_id}").json()
        print(f"\ndurable study: wall time {detail['wall_seconds']:.1f} s, parts one after another "
              f"{detail['child_seconds']:.1f} s, through 3 killed workers and a killed API")
        assert final.status == "succeeded", final.error
        children = {c["id"]: c for stage in ("search", "selection") for c in detail["stages"][stage]}
        children[detail["stages"]["final"]["id"]] = detail["stages"]["final"]
        # Each killed child was resumed by another worker and finished; each stage has its children once.
        assert all(children[child_id]["status"] == "succeeded" for child_id in killed.values())
        assert [c["seed"] for c in detail["stages"]["search"]] == [0, 1]
        assert [c["seed"] for c in detail["stages"]["selection"]] == [0, 1]
        with stack.factory() as session:
            attempts = {row.id: row.attempts for model in (Search, Training)
                        for row in session.scalars(select(model).where(model.study_id == study_id))}
        assert all(attempts[child_id] == 2 for child_id in killed.values()), attempts
    finally:
        for process in apis:
            if process.process.poll() is None:
                process.kill()
