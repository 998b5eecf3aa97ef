"""ASGI middleware that turns bad requests away before any route parses them.

- `BodyLimitMiddleware`: 413 for bodies above the limit. A declared `Content-Length` is refused before
  a byte is read; every body (chunked ones too) is counted as it is received, and the route reading it
  gets a 413 `HTTPException` the moment it passes the limit (nothing of the rest is read).
- `NulMiddleware`: 422 for a NUL character in the path or the query string (PostgreSQL refuses NUL in
  text, and no name or id of ours contains one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from urllib.parse import parse_qsl, unquote

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_BODY_METHODS = ("POST", "PUT", "PATCH", "DELETE")


async def _send_json(
    send: Send, status: int, body: object, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})


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
            await _send_json(send, 413, {"detail": detail}, [(b"connection", b"close")])
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


class NulMiddleware:
    """422 naming the parameter when the path or a query parameter contains NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            loc = _nul_location(scope)
            if loc is not None:
                issue = {"loc": loc, "msg": "must not contain the NUL character", "type": "string_nul"}
                await _send_json(send, 422, {"detail": [issue]})
                return
        await self.app(scope, receive, send)


def _nul_location(scope: Scope) -> list[str] | None:
    if "\x00" in scope.get("path", "") or "%00" in scope.get("raw_path", b"").decode("latin-1"):
        return ["path"]
    query = scope.get("query_string", b"").decode("latin-1")
    if "%00" not in query and "\x00" not in query:
        return None
    for key, value in parse_qsl(query, keep_blank_values=True, encoding="latin-1"):
        if "\x00" in key or "\x00" in value:
            return ["query", unquote(key).replace("\x00", "")]
    return ["query"]
