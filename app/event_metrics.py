"""Prometheus metrics of the event ingester (process-wide: served by the `/metrics` of the API process
that runs it, or by whatever serves the registry of a separate `darts-service ingest`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Histogram

EVENTS_INGESTED = Counter(
    "darts_ingester_events_total",
    "Stream entries handled by the event ingester, by event type and outcome.",
    ["type", "outcome"],
)
# Every series exists from the start (at 0), so a dashboard or an alert on `malformed` or
# `dead_lettered` sees the series before the first bad entry.
for _type in ("epoch", "training_epoch", "status"):
    for _outcome in ("stored", "duplicate", "stale", "fenced", "orphan", "dead_lettered", "error"):
        EVENTS_INGESTED.labels(type=_type, outcome=_outcome)
EVENTS_INGESTED.labels(type="unknown", outcome="malformed")

EPOCH_DURATION = Histogram(
    "darts_epoch_duration_seconds",
    "Duration of a search epoch as its worker measured it (observed when the epoch is stored).",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400),
)
INGESTION_LAG = Histogram(
    "darts_ingestion_lag_seconds",
    "Time from an event's emission by a worker to its storage in SQL by the ingester.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900),
)


def observe_stored(event: Any) -> None:
    """Record an event the ingester has just stored (first delivery, not a duplicate)."""
    emitted_at = getattr(event, "emitted_at", None)
    if emitted_at is not None:
        INGESTION_LAG.observe(max(0.0, (datetime.now(UTC) - emitted_at).total_seconds()))
    if getattr(event, "type", None) == "epoch":
        EPOCH_DURATION.observe(event.seconds)
