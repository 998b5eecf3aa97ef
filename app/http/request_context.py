"""`RequestContextMiddleware`: each HTTP request's id, and the log context while it is served
(`app.logging_config` copies the context onto every record)."""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.logging_config import log_context

REQUEST_ID_HEADER = "x-request-id"
# A client's own id is kept when it is short and plain (it goes into every log line); else we make one.
_CLIENT_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class RequestContextMiddleware:
    """Gives each HTTP request an id (the client's `X-Request-ID` when sane, else a new one), binds it
    and the route's `search_id` path parameter to the log context while the request runs, and
    returns the id in the response's `X-Request-ID` header."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope["headers"]).get(REQUEST_ID_HEADER.encode(), b"").decode("latin-1")
        request_id = given if _CLIENT_REQUEST_ID.fullmatch(given) else uuid.uuid4().hex

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        with log_context(request_id=request_id, search_id=_search_id_of(scope), attempt=None):
            await self.app(scope, receive, send_with_id)


# The paths of the routes that take a `search_id` (`/searches/{search_id}` and what is below it).
_SEARCH_PATH = re.compile(r"/searches/(?P<search_id>[^/]+)(?P<below>/[^/]+)?")


def _search_id_of(scope: Scope) -> str | None:
    """The `search_id` path parameter of the route this request will reach, if it has one.

    Read off the path (`POST /searches/estimate` is the one path of that shape without an id): matching
    it against every route, as the router does, cost a tenth of the API's time under many polls.
    """
    match = _SEARCH_PATH.fullmatch(scope.get("path", ""))
    if match is None or (match["below"] is None and match["search_id"] == "estimate"):
        return None
    return match["search_id"]
