"""The events workers send through the Redis Stream: their schema and parsing.

Every stream entry has one field, `data`: the JSON of an `EpochEvent` (a search's epoch), a
`TrainingEpochEvent` (a training's epoch) or a `StatusEvent`. Each event names its job by `kind`
("search" when absent: entries written before trainings existed still parse) and `job_id` (read from
`search_id` too, the name older entries use), and carries `attempt`, the fencing token of the lease
the sending run held (`app.lifecycle.lease`): the projection discards events of any attempt but the
job's current one.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, TypeAdapter

from app.db import utcnow
from app.lifecycle.status import Status
from darts_core.spec.records import EpochRecord

# The metrics of an epoch record (what a search row keeps of its last epoch); the method is the search's.
EPOCH_METRICS = tuple(
    name for name in EpochRecord.model_fields if name not in ("genotype", "alphas", "method", "schedule")
)


class _EventBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    event_id: uuid.UUID = Field(default_factory=uuid.uuid4, description="Assigned by the producer.")
    kind: Literal["search", "training"] = Field(default="search", description="The kind of job.")
    job_id: str = Field(
        min_length=1, max_length=36, validation_alias=AliasChoices("job_id", "search_id"),
        description="The search's or training's id (`search_id` in entries written before trainings).",
    )
    attempt: int | None = Field(
        default=None, ge=1, description="The sender's fencing token (the lease's attempt number)."
    )
    emitted_at: datetime = Field(default_factory=utcnow, description="When the producer sent it (UTC).")


class EpochEvent(_EventBase, EpochRecord):
    """One finished search epoch: darts_core's epoch record (`EpochResult.to_dict()`) in an event
    envelope."""

    type: Literal["epoch"] = "epoch"
    kind: Literal["search"] = "search"

    def metrics(self) -> dict[str, float | int]:
        """The summary the `searches` row keeps of its last epoch: the scalar fields of the record."""
        return self.model_dump(include=set(EPOCH_METRICS))

    def record(self) -> dict[str, Any]:
        """The epoch record itself (what `search_epochs` stores), without the event's envelope."""
        return self.model_dump(include=set(EpochRecord.model_fields))


class TrainingEpochRecord(BaseModel):
    """One finished training epoch: the fields of `darts_core.train.records.TrainEpoch` (`to_dict()`)."""

    model_config = ConfigDict(extra="forbid")

    epoch: int = Field(ge=1)
    train_loss: float
    train_acc: float
    valid_loss: float | None = Field(default=None, description="Null without a validation split.")
    valid_acc: float | None = Field(default=None, description="Null without a validation split.")
    test_loss: float
    test_acc: float
    lr: float
    drop_path_prob: float
    seconds: float


#: The scalar fields a training row keeps of its last epoch (`trainings.metrics`).
TRAINING_EPOCH_METRICS = tuple(TrainingEpochRecord.model_fields)


class TrainingEpochEvent(_EventBase, TrainingEpochRecord):
    """One finished training epoch in an event envelope."""

    type: Literal["training_epoch"] = "training_epoch"
    kind: Literal["training"] = "training"

    def record(self) -> dict[str, Any]:
        """The epoch record itself (what `training_epochs` stores), without the event's envelope."""
        return self.model_dump(include=set(TrainingEpochRecord.model_fields))


class TrainingOutcome(BaseModel):
    """The final figures of a training that succeeded (`darts_core.train.records.TrainResult`)."""

    model_config = ConfigDict(extra="forbid")

    test_accuracy: float
    test_loss: float
    valid_accuracy: float | None = None
    parameters: int
    multiply_adds: int | None = None


class StatusEvent(_EventBase):
    """A status change reported by a worker.

    `running` when it starts (or resumes) a search; `queued` when it hands a search back to the queue
    (warm shutdown); `succeeded`, `failed` (with `error`) or `cancelled` when it ends. A search its
    early-stop rule ended succeeds with `stop_reason` and the `genotype` the rule keeps (an earlier
    epoch's).
    """

    type: Literal["status"] = "status"
    status: Status
    error: str | None = None
    stop_reason: str | None = None
    genotype: dict[str, Any] | None = None
    outcome: TrainingOutcome | None = Field(
        default=None, description="A training's `succeeded`: its final figures."
    )


#: Any event of the stream.
JobEvent = EpochEvent | TrainingEpochEvent | StatusEvent
_event_adapter: TypeAdapter[JobEvent] = TypeAdapter(Annotated[JobEvent, Field(discriminator="type")])


def parse_event(data: str | bytes) -> JobEvent:
    """The event in a stream entry's `data` field; raises `pydantic.ValidationError` when malformed."""
    return _event_adapter.validate_json(data)
