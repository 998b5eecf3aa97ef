"""`PolledReadMiddleware`: a polled read (`app.routes.polled` says which) answered from the caches,
without the routing, the dependencies and the route, while the routes' last answer and the request's
API key are both still kept."""

from __future__ import annotations

from collections.abc import Hashable
from types import SimpleNamespace

from fastapi.security.utils import get_authorization_scheme_param
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from app.auth import LOCAL_OWNER, may_see
from app.db_gate import SELF_GATED
from app.routes.polled import epochs_page_of, not_modified, read_key
from app.services.job_json import OwnedJson
from app.services.keys import Owner, hash_key
from app.services.read_cache import ReadCache

JSON_HEADERS = [(b"content-type", b"application/json")]

# The route templates, for the metrics' `route` label of the requests answered here.
_TEMPLATES = {
    ("searches", False): SimpleNamespace(path="/searches/{search_id}"),
    ("searches", True): SimpleNamespace(path="/searches/{search_id}/epochs"),
    ("trainings", False): SimpleNamespace(path="/trainings/{training_id}"),
    ("trainings", True): SimpleNamespace(path="/trainings/{training_id}/epochs"),
}


class PolledReadMiddleware:
    """Answers a polled read from the caches when the routes have just answered the same one."""

    def __init__(
        self,
        app: ASGIApp,
        read_cache: ReadCache[OwnedJson],
        key_cache: ReadCache[Owner | None],
        no_auth: bool,
    ) -> None:
        self.app = app
        self.read_cache = read_cache
        self.key_cache = key_cache
        self.no_auth = no_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        key = self._key(scope)
        owner = self._owner(scope) if key is not None else None
        if key is not None and owner is not None:
            kept = self.read_cache.peek(key)
            if kept is not None and may_see(owner, kept.owner):
                scope["route"] = _TEMPLATES[(str(key[0]), key[2] is not None)]
                etag = (b"etag", kept.etag.encode())
                if not_modified(Headers(scope=scope), kept.etag):
                    await send({"type": "http.response.start", "status": 304, "headers": [etag]})
                    await send({"type": "http.response.body", "body": b""})
                    return
                body = kept.body
                headers = [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), etag]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    @staticmethod
    def _key(scope: Scope) -> tuple[Hashable, ...] | None:
        """The read key a GET asks for: a job without a query string, or an epochs page whose query is a
        plain `limit` and/or `cursor` (`epochs_page_of`); None sends the request to the routes."""
        if scope["type"] != "http" or scope["method"] != "GET":
            return None
        match = SELF_GATED.fullmatch(scope["path"])
        if match is None:
            return None
        query = scope.get("query_string", b"")
        if match["epochs"] is None:
            return None if query else read_key(match["kind"], match["job_id"])
        try:
            page = epochs_page_of(query.decode("ascii"))
        except UnicodeDecodeError:
            return None
        return None if page is None else read_key(match["kind"], match["job_id"], page)

    def _owner(self, scope: Scope) -> Owner | None:
        """The request's owner as the key cache knows it now; None sends the request to the routes."""
        if self.no_auth:
            return LOCAL_OWNER
        # Read as the routes' HTTPBearer reads it (the first header, the same split); a request with
        # more than one goes to the routes, which answer for the first.
        authorization = Headers(scope=scope).getlist("authorization")
        if len(authorization) != 1:
            return None
        scheme, credentials = get_authorization_scheme_param(authorization[0])
        if scheme.lower() != "bearer" or not credentials:
            return None
        return self.key_cache.peek(hash_key(credentials))
