"""The events workers send through the Redis Stream: their schema and parsing.

Every stream entry has one field, `data`: the JSON of an `EpochEvent` or a `StatusEvent`. Each event
carries `attempt`, the fencing token of the lease the sending run held (`app.lifecycle.lease`): the
projection discards events of any attempt but the search's current one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from app.db import utcnow
from app.lifecycle.status import Status
from darts_core.records import EpochRecord

# The scalar fields of an epoch record (what a search row keeps of its last epoch).
EPOCH_METRICS = tuple(name for name in EpochRecord.model_fields if name not in ("genotype", "alphas"))


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Assigned by the producer.")
    search_id: str = Field(min_length=1, max_length=36)
    attempt: int | None = Field(
        default=None, ge=1, description="The sender's fencing token (the lease's attempt number)."
    )
    emitted_at: datetime = Field(default_factory=utcnow, description="When the producer sent it (UTC).")


class EpochEvent(_EventBase, EpochRecord):
    """One finished epoch: darts_core's epoch record (`EpochResult.to_dict()`) in an event envelope."""

    type: Literal["epoch"] = "epoch"

    def metrics(self) -> dict[str, float | int]:
        """The summary the `searches` row keeps of its last epoch: the scalar fields of the record."""
        return self.model_dump(include=set(EPOCH_METRICS))

    def record(self) -> dict[str, Any]:
        """The epoch record itself (what `search_epochs` stores), without the event's envelope."""
        return self.model_dump(include=set(EpochRecord.model_fields))


class StatusEvent(_EventBase):
    """A status change reported by a worker.

    `running` when it starts (or resumes) a search; `queued` when it hands a search back to the queue
    (warm shutdown); `succeeded`, `failed` (with `error`) or `cancelled` when it ends.
    """

    type: Literal["status"] = "status"
    status: Status
    error: str | None = None


SearchEvent = Annotated[EpochEvent | StatusEvent, Field(discriminator="type")]
_event_adapter: TypeAdapter[EpochEvent | StatusEvent] = TypeAdapter(SearchEvent)


def parse_event(data: str | bytes) -> EpochEvent | StatusEvent:
    """The event in a stream entry's `data` field; raises `pydantic.ValidationError` when malformed."""
    return _event_adapter.validate_json(data)
