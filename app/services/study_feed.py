"""Server-Sent Events of a study: its stage and status, its children's statuses and their epochs.

One poller per stream, every poll interval: a study has a few followers (its owner's page, a
`darts studies watch`), unlike a search's feed (`app.services.job_feed`), which shares its polls.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import anyio
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db_gate import DatabaseGate
from app.lifecycle.status import TERMINAL
from app.models import SearchEpoch, Study, TrainingEpoch
from app.schemas.searches import EpochPublic
from app.schemas.trainings import TrainingEpochPublic
from app.services.studies import _child_public
from app.services.study_advance import children


def _poll(factory: sessionmaker[Session], study_id: str, seen: dict[str, int]) -> dict[str, Any] | None:
    """The study's state, its children, and every epoch after the last one `seen` of each child."""
    with factory() as session:
        study = session.get(Study, study_id)
        if study is None:
            return None
        # The study first: once it is terminal, the same poll sees every child's last epoch.
        state = {"status": study.status, "stage": study.stage, "error": study.error,
                 "chosen_seed": study.chosen_seed, "chosen_search_id": study.chosen_search_id}
        found = children(session, study_id)
        epochs: list[dict[str, Any]] = []
        for child in found:
            after = seen.get(child.row.id, 0)
            data: list[dict[str, Any]]
            query: Any
            if child.kind == "search":
                query = select(SearchEpoch).where(
                    SearchEpoch.search_id == child.row.id, SearchEpoch.epoch > after
                )
                # The alphas are left out: the search's own stream has them, a study's follower needs curves.
                data = [EpochPublic.model_validate(r).model_dump(mode="json", exclude={"alphas"})
                        for r in session.scalars(query.order_by(SearchEpoch.epoch))]
            else:
                query = select(TrainingEpoch).where(
                    TrainingEpoch.training_id == child.row.id, TrainingEpoch.epoch > after
                )
                data = [TrainingEpochPublic.model_validate(r).model_dump(mode="json")
                        for r in session.scalars(query.order_by(TrainingEpoch.epoch))]
            epochs.extend({"kind": child.kind, "id": child.row.id, "seed": child.seed, "stage": child.stage,
                           "record": record} for record in data)
        return {"study": state, "children": [_child_public(child) for child in found], "epochs": epochs}


async def study_stream(
    factory: sessionmaker[Session], gate: DatabaseGate, study_id: str, poll_seconds: float
) -> AsyncIterator[dict[str, str]]:
    """`study` events (first, and on every status or stage change), `child` events (a child appeared or
    changed status) and `epoch` events (each child's epochs, in order); ends after a terminal status."""
    seen: dict[str, int] = {}
    sent_children: dict[str, str] = {}
    sent_study: dict[str, Any] | None = None
    while True:
        async with gate.slot():
            state = await run_in_threadpool(_poll, factory, study_id, dict(seen))
        if state is None:
            return
        for epoch in state["epochs"]:
            seen[epoch["id"]] = epoch["record"]["epoch"]
            yield {"event": "epoch", "data": json.dumps(epoch)}
        for child in state["children"]:
            text = json.dumps(child, default=str)
            if sent_children.get(child["id"]) != child["status"]:
                sent_children[child["id"]] = child["status"]
                yield {"event": "child", "data": text}
        if state["study"] != sent_study:
            sent_study = state["study"]
            yield {"event": "study", "data": json.dumps(sent_study)}
        if state["study"]["status"] in TERMINAL:
            return
        await anyio.sleep(poll_seconds)
