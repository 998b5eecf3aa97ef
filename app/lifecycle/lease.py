"""The lease: which worker runs a job (a search or a training) now, with a fencing token.

A worker takes a job with one conditional UPDATE (status queued or running, lease free or expired,
attempts left), which also counts the attempt: `attempts` after the UPDATE is the run's *fencing
token*. Renewals, releases and every event the run publishes carry it; the projection discards
events of any other token, so a run that lost its lease (it stalled, the sweep handed the search to
another worker) can never write into the search's history again.

Times come from the database's clock (`database_now`), so workers on several hosts agree on expiry
whatever their own clocks say.
"""

from __future__ import annotations

import contextvars
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.db import affected_rows, utcnow
from app.lifecycle.kinds import SEARCH, JobKind
from app.lifecycle.status import Status

logger = logging.getLogger(__name__)


def database_now(session: Session) -> datetime:
    """The database server's current time (UTC, timezone-aware).

    PostgreSQL answers with its own clock; SQLite lives in this process's machine, whose clock is
    then the database's.
    """
    if session.get_bind().dialect.name == "postgresql":
        now: datetime = session.execute(text("SELECT clock_timestamp()")).scalar_one()
        return now
    return utcnow()


def lease_free_or_expired(now: datetime, kind: JobKind = SEARCH) -> ColumnElement[bool]:
    """SQL: nobody holds the job's lease, or its holder let it expire before `now`."""
    model = kind.model
    result: ColumnElement[bool] = or_(
        model.lease_owner.is_(None), model.lease_expires_at.is_(None), model.lease_expires_at < now
    )
    return result


def lease_held(now: datetime, kind: JobKind = SEARCH) -> ColumnElement[bool]:
    """SQL: some worker holds a lease that has not expired at `now` (the negation of the above)."""
    model = kind.model
    result: ColumnElement[bool] = model.lease_owner.is_not(None) & (model.lease_expires_at >= now)
    return result


def new_owner_id() -> str:
    """`hostname:pid:random`: names one run of one process in a job's `lease_owner`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def owner_prefix(pid: int, hostname: str | None = None) -> str:
    """The `lease_owner` prefix of every lease process `pid` on `hostname` takes."""
    return f"{hostname or socket.gethostname()}:{pid}:"


class Lease:
    """One worker's lease on one job (`kind`: a search by default, or a training).

    `acquire()` takes it (and sets `token`); `renew()`, `release()` and `finish()` act only while this
    owner and token still hold it. `start_heartbeat()` renews it every `seconds / 5` from a thread and
    sets `lost` when the lease was taken over, or when no renewal succeeded for `seconds * 0.6`: the run
    then stops before the lease can expire and be handed to another worker (two runs never overlap).
    """

    def __init__(
        self,
        factory: sessionmaker[Session],
        job_id: str,
        *,
        seconds: float,
        max_attempts: int,
        kind: JobKind = SEARCH,
    ) -> None:
        self.factory = factory
        self.job_id = job_id
        self.kind = kind
        self.seconds = seconds
        self.max_attempts = max_attempts
        self.owner = new_owner_id()
        self.token: int | None = None
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_renewal = time.monotonic()

    def _mine(self) -> ColumnElement[bool]:
        model = self.kind.model
        mine: ColumnElement[bool] = (
            (model.id == self.job_id) & (model.lease_owner == self.owner) & (model.attempts == self.token)
        )
        return mine

    def acquire(self) -> bool:
        """Take the lease if it is free or expired and attempts remain; counts one attempt."""
        with self.factory() as session, session.begin():
            now = database_now(session)
            model = self.kind.model
            taken = session.execute(
                update(model)
                .where(
                    model.id == self.job_id,
                    model.status.in_([Status.queued, Status.running]),
                    lease_free_or_expired(now, self.kind),
                    model.attempts < self.max_attempts,
                )
                .values(
                    lease_owner=self.owner,
                    lease_expires_at=now + timedelta(seconds=self.seconds),
                    attempts=model.attempts + 1,
                )
                .returning(model.attempts)
                .execution_options(synchronize_session=False)
            ).first()
        if taken is None:
            return False
        self.token = int(taken[0])
        self._last_renewal = time.monotonic()
        return True

    def _update_mine(self, *, extend_by: timedelta | None = None, **values: Any) -> bool:
        """UPDATE the row while this owner and token hold it; `extend_by` sets the expiry that far
        ahead of the database's clock."""
        with self.factory() as session, session.begin():
            if extend_by is not None:
                values["lease_expires_at"] = database_now(session) + extend_by
            changed = affected_rows(
                session.execute(
                    update(self.kind.model)
                    .where(self._mine())
                    .values(**values)
                    .execution_options(synchronize_session=False)
                )
            )
        return changed == 1

    def renew(self) -> bool:
        """Push the expiry one period ahead; False when this lease is no longer ours."""
        renewed = self._update_mine(extend_by=timedelta(seconds=self.seconds))
        if renewed:
            self._last_renewal = time.monotonic()
        return renewed

    def release(self, *, give_back_attempt: bool = False) -> bool:
        """Free the lease now; `give_back_attempt` uncounts this attempt (a clean warm shutdown)."""
        values: dict[str, Any] = {"lease_owner": None, "lease_expires_at": None}
        if give_back_attempt:
            values["attempts"] = self.kind.model.attempts - 1
        return self._update_mine(**values)

    def finish(self) -> bool:
        """Keep the lease one more period after the final status was published.

        The ingester stores that status within moments; until it has, the row still reads `running`,
        and a duplicate task arriving in between must still find the search taken.
        """
        return self._update_mine(extend_by=timedelta(seconds=self.seconds))

    # -- heartbeat ---------------------------------------------------------------------------------

    @property
    def renew_interval(self) -> float:
        return self.seconds / 5

    @property
    def give_up_after(self) -> float:
        """Seconds without a successful renewal after which the run stops itself (before expiry)."""
        return self.seconds * 0.6

    def overdue(self) -> bool:
        """Whether no renewal succeeded for `give_up_after` seconds; sets `lost` when so.

        The run asks this itself between batches, so it stops in time even while the heartbeat thread
        is stuck in a renewal that has not failed yet (a database that stopped answering mid-query).
        """
        if time.monotonic() - self._last_renewal >= self.give_up_after:
            if not self.lost.is_set():
                logger.error(
                    "lease on %s %s not renewed for %.0f s; stopping this run",
                    self.kind.label, self.job_id, time.monotonic() - self._last_renewal,
                )
            self.lost.set()
        return self.lost.is_set()

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.renew_interval):
            try:
                if not self.renew():
                    logger.error(
                        "lease on %s %s was taken over; stopping this run", self.kind.label, self.job_id
                    )
                    self.lost.set()
                    return
            except SQLAlchemyError as exc:
                silent = time.monotonic() - self._last_renewal
                logger.warning(
                    "could not renew the lease on %s %s (%s)", self.kind.label, self.job_id, exc
                )
                if silent >= self.give_up_after:
                    logger.error(
                        "lease on %s %s not renewed for %.0f s; stopping this run",
                        self.kind.label, self.job_id, silent,
                    )
                    self.lost.set()
                    return

    def start_heartbeat(self) -> None:
        # In a copy of this context: the heartbeat's log lines carry the run's search id and attempt.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._heartbeat,), name=f"lease-{self.job_id}",
            daemon=True,
        )
        self._thread.start()

    def stop_heartbeat(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()


def current_token(session: Session, job_id: str, kind: JobKind = SEARCH) -> int | None:
    """The fencing token of the job's current attempt (None when the job does not exist)."""
    token: int | None = session.scalar(select(kind.model.attempts).where(kind.model.id == job_id))
    return token
