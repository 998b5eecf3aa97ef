"""Producers' side of the events stream: XADD one entry per event (workers use it)."""

from __future__ import annotations

from typing import Any

import redis

from app.events.schema import EpochEvent, StatusEvent
from app.lifecycle.status import Status
from app.settings import Settings

# Stream entries beyond this many are trimmed (approximately) on XADD; the ingester keeps up long before.
STREAM_MAX_LEN = 100_000


def publish(client: redis.Redis, settings: Settings, event: EpochEvent | StatusEvent) -> str:
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
) -> str:
    """Publish one finished epoch; `record` is `EpochResult.to_dict()`. Returns the stream entry id."""
    return publish(client, settings, EpochEvent(search_id=search_id, attempt=attempt, **record))


def publish_status(
    client: redis.Redis,
    settings: Settings,
    search_id: str,
    status: Status,
    error: str | None = None,
    *,
    attempt: int | None = None,
) -> str:
    """Publish a status change of `search_id`. Returns the stream entry id."""
    return publish(
        client, settings, StatusEvent(search_id=search_id, status=status, error=error, attempt=attempt)
    )
