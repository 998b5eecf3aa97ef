"""The database gate: never more requests at work on the database than the pool has connections.

Why it exists (issue 10's load collapse). Sync routes and sync dependencies run in anyio's thread pool
(40 threads), and a request hops between threads several times: each sync dependency, the route, then
the serialisation of its response model. The request's session (`SessionDep`) checks a connection out
at its first query and gives it back only when the dependency exits, after the response is sent. So a
request holds a connection while it waits, in the thread pool's queue, for its serialisation hop. Under
60-100 clients every thread ends up blocked in `QueuePool` waiting for a connection, while every
connection belongs to a request waiting for a thread: nothing moves until the pool's 30 s timeout.

The gate admits at most `DB_POOL_SIZE` HTTP requests at once (less the slots kept for the event
streams' pollers); the others wait on the event loop, where
waiting costs neither a thread nor a connection. An admitted request holds at most one connection at a
time (the auth dependencies close their sessions before the route opens its own), so an admitted
request never waits for a connection, and a thread is never blocked on the pool. Server-Sent Events
leave the gate once their response has started: after that they read SQL only through the shared
poller of `app.services.job_feed`, which takes a slot of its own gate for each poll.

The reads clients poll (`SELF_GATED`: GET of a search or training and of its epochs) are answered from
memory most of the time (app.services.read_cache), so they do not queue at the gate: their answers,
every page of epochs included, are built by threads of their own (`app.state.poll_builder`,
POLL_SLOTS). API keys are looked up
under a gate of their own too (`app.state.key_gate`), since requests holding slots may wait for a
lookup.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypeVar

import anyio
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

T = TypeVar("T")

# GETs whose routes read SQL outside the request gate (app.routes.polled builds them in POLL_SLOTS).
SELF_GATED = re.compile(r"/(?P<kind>searches|trainings)/(?P<job_id>[^/]+)(?P<epochs>/epochs)?")
# Set in a request's scope while it holds a slot of the request gate.
HOLDS_SLOT = "darts.db_gate_slot"


class DatabaseGate:
    """`slots` places for work that may use one database connection each."""

    def __init__(self, slots: int) -> None:
        if slots < 1:
            raise ValueError(f"slots must be at least 1, got {slots}")
        self.slots = slots
        # Made on first use: an anyio semaphore belongs to the event loop that runs the app.
        self._semaphore: anyio.Semaphore | None = None

    @property
    def semaphore(self) -> anyio.Semaphore:
        if self._semaphore is None:
            self._semaphore = anyio.Semaphore(self.slots)
        return self._semaphore

    @property
    def in_use(self) -> int:
        """Slots taken now (for tests): `slots` minus the free ones."""
        return self.slots - self.semaphore.value

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        async with self.semaphore:
            yield


async def run_with_connection(request: Request, work: Callable[[], T]) -> T:
    """`work()` (which may use one database connection) in the thread pool, inside a slot of the
    request gate: the request's own when it holds one, else one taken for the time of `work`."""
    if request.scope.get(HOLDS_SLOT):
        return await run_in_threadpool(work)
    gate: DatabaseGate = request.app.state.db_gate
    return await run_in_gate(gate, work)


async def run_with_session(request: Request, work: Callable[[Session], T]) -> T:
    """`work(session)` with a session of its own, opened, used and closed in one trip to the thread pool
    (inside a slot of the request gate, as `run_with_connection`).

    For the writes clients send in bursts (submissions, cancels). A sync route with `SessionDep` makes
    four trips (the session's opening, the route, its response model, the session's closing), and under
    100 pollers each waited turns of an event loop with a hundred requests ready: a burst of 200
    submissions took 9.6 s, 4.4 s in one trip.
    """
    factory: sessionmaker[Session] = request.app.state.session_factory

    def work_in_session() -> T:
        with factory() as session:
            return work(session)

    return await run_with_connection(request, work_in_session)


async def run_in_gate(gate: DatabaseGate, work: Callable[[], T]) -> T:
    """`work()` in the thread pool, inside a slot of `gate`."""
    async with gate.slot():
        return await run_in_threadpool(work)
