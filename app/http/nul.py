"""`NulMiddleware`: 422 for a NUL character in the path or the query string, before any route parses
them (PostgreSQL refuses NUL in text, and no name or id of ours contains one)."""

from __future__ import annotations

from urllib.parse import parse_qsl, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from app.http.replies import send_json


class NulMiddleware:
    """422 naming the parameter when the path or a query parameter contains NUL."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            loc = _nul_location(scope)
            if loc is not None:
                issue = {"loc": loc, "msg": "must not contain the NUL character", "type": "string_nul"}
                await send_json(send, 422, {"detail": [issue]})
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
