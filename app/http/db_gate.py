"""`DatabaseGateMiddleware`: every HTTP request holds a slot of the request gate (`app.db_gate`, which
says why) until it is answered."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.db_gate import HOLDS_SLOT, SELF_GATED, DatabaseGate

EVENT_STREAM = b"text/event-stream"
# Paths that never touch the database: liveness must answer even while every slot is taken.
UNGATED_PATHS = frozenset({"/healthz"})


class DatabaseGateMiddleware:
    """ASGI middleware: every HTTP request holds a gate slot until it is answered (an event stream:
    until its response has started)."""

    def __init__(self, app: ASGIApp, gate: DatabaseGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in UNGATED_PATHS or _self_gated(scope):
            await self.app(scope, receive, send)
            return
        semaphore = self.gate.semaphore
        await semaphore.acquire()
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                scope[HOLDS_SLOT] = False
                semaphore.release()

        async def gated_send(message: Message) -> None:
            if message["type"] == "http.response.start" and _is_event_stream(message):
                release()
            await send(message)

        scope[HOLDS_SLOT] = True
        try:
            await self.app(scope, receive, gated_send)
        finally:
            release()


def _self_gated(scope: Scope) -> bool:
    return scope["method"] == "GET" and SELF_GATED.fullmatch(scope["path"]) is not None


def _is_event_stream(message: Message) -> bool:
    for name, value in message.get("headers", []):
        if name.lower() == b"content-type":
            return bool(value.startswith(EVENT_STREAM))
    return False
