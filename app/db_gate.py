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
poller of `app.services.search_feed`, which takes a slot of its own gate for each poll.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

EVENT_STREAM = b"text/event-stream"
# Paths that never touch the database: liveness must answer even while every slot is taken.
UNGATED_PATHS = frozenset({"/healthz"})


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


class DatabaseGateMiddleware:
    """ASGI middleware: every HTTP request holds a gate slot until it is answered (an event stream:
    until its response has started)."""

    def __init__(self, app: ASGIApp, gate: DatabaseGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED_PATHS:
            await self.app(scope, receive, send)
            return
        semaphore = self.gate.semaphore
        await semaphore.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                semaphore.release()

        async def gated_send(message: Message) -> None:
            if message["type"] == "http.response.start" and _is_event_stream(message):
                release()
            await send(message)

        try:
            await self.app(scope, receive, gated_send)
        finally:
            release()


def _is_event_stream(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return bool(value.startswith(EVENT_STREAM))
    return False
