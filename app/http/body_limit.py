"""`BodyLimitMiddleware`: 413 for bodies above the limit, before any route parses them.

A declared `Content-Length` is refused before a byte is read; every body (chunked ones too) is counted
as it is received, and the route reading it gets a 413 `HTTPException` the moment it passes the limit
(nothing of the rest is read).
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.replies import send_json

_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class BodyLimitMiddleware:
    """413 for request bodies above `limit_for(scope)`: `(bytes, the 413's detail)`."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], tuple[int, str]]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit, detail = self.limit_for(scope)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            # Refused unread; the server closes the connection rather than read what follows.
            await send_json(send, 413, {"detail": detail}, [(b"connection", b"close")])
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # FastAPI re-raises HTTPException from body parsing; streaming routes see it too.
                    raise HTTPException(413, detail=detail)
            return message

        await self.app(scope, counted_receive, send)
