"""Producers' side of the events stream: XADD one entry per event (workers use it)."""

from __future__ import annotations

from typing import Any

import redis

from app.events.schema import EpochEvent, JobEvent, StatusEvent, TrainingEpochEvent, TrainingOutcome
from app.lifecycle.status import Status
from app.settings import Settings

# Stream entries beyond this many are trimmed (approximately) on XADD; the ingester keeps up long before.
STREAM_MAX_LEN = 100_000


def publish(client: redis.Redis, settings: Settings, event: JobEvent) -> str:
    """XADD `event` to the events stream; returns the entry id."""
    entry_id = client.xadd(
        settings.events_stream,
        {"data": event.model_dump_json()},
        maxlen=STREAM_MAX_LEN,
        approximate=True,
    )
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def publish_epoch(
    client: redis.Redis,
    settings: Settings,
    search_id: str,
    record: dict[str, Any],
    *,
    attempt: int | None = None,
    kind: str = "search",
) -> str:
    """Publish one finished epoch of the job `search_id` of `kind`; `record` is `EpochResult.to_dict()`
    (a search) or `TrainEpoch.to_dict()` (a training). Returns the stream entry id."""
    event: JobEvent
    if kind == "training":
        event = TrainingEpochEvent(job_id=search_id, attempt=attempt, **record)
    else:
        event = EpochEvent(job_id=search_id, attempt=attempt, **record)
    return publish(client, settings, event)


def publish_status(
    client: redis.Redis,
    settings: Settings,
    search_id: str,
    status: Status,
    error: str | None = None,
    *,
    attempt: int | None = None,
    stop_reason: str | None = None,
    genotype: dict[str, Any] | None = None,
    kind: str = "search",
    outcome: TrainingOutcome | None = None,
) -> str:
    """Publish a status change of the job `search_id` of `kind` (`stop_reason` and `genotype`: a
    `succeeded` search that its early-stop rule ended; `outcome`: a `succeeded` training's figures).
    Returns the stream entry id."""
    event = StatusEvent.model_validate(
        {
            "job_id": search_id, "kind": kind, "status": status, "error": error, "attempt": attempt,
            "stop_reason": stop_reason, "genotype": genotype, "outcome": outcome,
        }
    )
    return publish(client, settings, event)
