"""The statuses of a job (a search or a training) and the transitions between them: the one table every
part obeys.

| from         | to          | who                                                                  |
|--------------|-------------|----------------------------------------------------------------------|
| (none)       | queued      | the API (`POST /searches`, `POST /trainings`)                        |
| queued       | running     | the worker holding the current lease (its `running` event or first epoch) |
| queued       | cancelled   | cancel of a search no worker holds                                   |
| queued       | cancelling  | cancel of a search a worker has just leased                          |
| queued       | failed      | the worker: attempts exhausted, or the run failed before it started  |
| running      | queued      | the sweep (lease expired) or the worker (warm shutdown)              |
| running      | cancelling  | cancel                                                               |
| running      | succeeded   | the worker holding the current lease                                 |
| running      | failed      | the worker holding the current lease                                 |
| running      | cancelled   | the worker holding the current lease (it saw the cancel flag first)  |
| cancelling   | cancelled   | the worker, or the sweep when that worker died                       |
| cancelling   | succeeded   | the worker: the last epoch ended before the cancel reached it        |
| cancelling   | failed      | the worker                                                           |

Terminal statuses (succeeded, failed, cancelled) never change again.
"""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    """What a job is doing now (the `status` of the API and of the `searches` / `trainings` row)."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"


TERMINAL: frozenset[Status] = frozenset({Status.succeeded, Status.failed, Status.cancelled})
#: Jobs that hold or wait for a worker (what the per-owner quota counts).
ACTIVE: frozenset[Status] = frozenset({Status.queued, Status.running, Status.cancelling})

TRANSITIONS: dict[Status, frozenset[Status]] = {
    Status.queued: frozenset(
        {Status.running, Status.cancelled, Status.cancelling, Status.failed}
    ),
    Status.running: frozenset(
        {Status.queued, Status.cancelling, Status.succeeded, Status.failed, Status.cancelled}
    ),
    Status.cancelling: frozenset({Status.cancelled, Status.succeeded, Status.failed}),
    Status.succeeded: frozenset(),
    Status.failed: frozenset(),
    Status.cancelled: frozenset(),
}


class InvalidTransition(ValueError):
    """A status change the table above does not allow, naming the kind of job (`JobKind.name`: "search",
    "training"; "job" when the caller does not say) it was asked of."""

    def __init__(self, current: str, target: str, kind: str = "job") -> None:
        super().__init__(f"a {kind} cannot go from {str(current)!r} to {str(target)!r}")
        self.current = current
        self.target = target
        self.kind = kind


def can_transition(current: str, target: str) -> bool:
    """Whether a job in status `current` may move to `target` (both status names)."""
    return Status(target) in TRANSITIONS[Status(current)]


def check_transition(current: str, target: str, kind: str = "job") -> None:
    """Raise InvalidTransition (naming `kind`) unless `current -> target` is in the table."""
    if not can_transition(current, target):
        raise InvalidTransition(current, target, kind)


def sources_of(target: Status) -> list[Status]:
    """Every status from which `target` may be reached (for conditional UPDATEs)."""
    return [status for status, targets in TRANSITIONS.items() if target in targets]
