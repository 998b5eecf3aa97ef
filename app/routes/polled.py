"""The reads clients poll: a search or a training (`GET /searches/{id}`, `GET /trainings/{id}`) and
any page of its epochs (`.../epochs?limit=&cursor=`), answered from the API process's read cache
(app.services.read_cache) and shown only to an owner who may see them (404 otherwise, the same answer
as for a job that does not exist). Each answer has an `ETag`; `If-None-Match` naming it gets a 304.

Two ways in. The routes (`owned_json`) build an answer, keep it and check the owner. Then, while the
answer and the request's API key are both still kept, `app.http.polled_read` gives the same bytes to
the same kind of request without running the routing, the dependencies and the route: a poll costs a
dictionary lookup instead of a trip through the framework (most of the API's time under 100 pollers).
Anything else (another key, a query string that is not a plain `limit`/`cursor`, a miss) goes on to the
routes.

Every page of epochs is kept, not only the first: 100 pollers of `/epochs?limit=100` built the page on
every request and waited for the framework and a request slot each time (issue 22: 256 requests/s, p99
2.9 s). What bounds the memory: an answer is kept READ_CACHE_SECONDS, and all kept answers together
weigh at most READ_CACHE_MAX_BYTES (a page of 1000 epochs can be megabytes).
"""

from __future__ import annotations

import asyncio
import contextvars
import re
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor

from fastapi import Request, Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.datastructures import Headers

from app.auth import may_see
from app.events.changes import announce_change
from app.services.errors import NotFound
from app.services.job_json import OwnedJson
from app.services.keys import Owner
from app.services.read_cache import ReadCache

MAX_EPOCHS_PAGE = 1000  # the largest page of epochs, and the page a request without `?limit=` gets
FIRST_EPOCHS_PAGE = (0, MAX_EPOCHS_PAGE)  # (after, limit) of `.../epochs` without a query string
# The query strings of an epochs page the middleware answers itself: `limit` and `cursor` as plain
# decimals, each at most once (anything else is for the routes to validate).
_LIMIT = re.compile(r"[1-9][0-9]{0,3}")
_CURSOR = re.compile(r"[0-9]{0,9}")
NOT_MODIFIED_RESPONSE: dict[int | str, dict[str, str]] = {
    304: {"description": "Not Modified: `If-None-Match` named the answer's current `ETag` (no body)"}
}


def read_key(kind: str, job_id: str, page: tuple[int, int] | None = None) -> tuple[Hashable, ...]:
    """The cache key of a job (`kind`: "searches" or "trainings") or of its epochs `page` (after, limit)."""
    return (kind, job_id, page)


def epochs_page_of(query: str) -> tuple[int, int] | None:
    """(after, limit) of an epochs page's query string when it is plainly `limit=N` and/or `cursor=E`
    (the routes would read the same page from it); None for anything else, which the routes answer."""
    after, limit = FIRST_EPOCHS_PAGE
    seen: set[str] = set()
    for pair in query.split("&") if query else []:
        name, equals, value = pair.partition("=")
        if not equals or name in seen:
            return None
        seen.add(name)
        if name == "limit" and _LIMIT.fullmatch(value) and int(value) <= MAX_EPOCHS_PAGE:
            limit = int(value)
        elif name == "cursor" and _CURSOR.fullmatch(value):
            after = int(value or "0")  # as app.services.jobs.epoch_cursor reads it
        else:
            return None
    return after, limit


def not_modified(headers: Headers, etag: str) -> bool:
    """Whether the request's `If-None-Match` names `etag` or is `*` (RFC 9110 13.1.2: lists of entity
    tags, in one header or several, compared weakly, so `W/"x"` matches `"x"`)."""
    tags = [tag.strip() for value in headers.getlist("if-none-match") for tag in value.split(",")]
    return "*" in tags or etag in (tag.removeprefix("W/") for tag in tags)


async def owned_json(
    request: Request,
    owner: Owner,
    key: tuple[Hashable, ...],
    read: Callable[[Session], OwnedJson],
    not_found: str,
) -> Response:
    """The JSON `read` builds for `key` (a `read_key`), kept READ_CACHE_SECONDS; 304 when the request's
    `If-None-Match` names its `ETag`."""
    factory: sessionmaker[Session] = request.app.state.session_factory

    def build() -> OwnedJson:
        with factory() as session:
            return read(session)

    # Built by threads of their own (POLL_SLOTS): never queued behind a crowd of other requests.
    cache: ReadCache[OwnedJson] = request.app.state.read_cache
    builder: Executor = request.app.state.poll_builder

    def build_here() -> Awaitable[OwnedJson]:
        # With the request's context (its id in the logs), as the thread pool would.
        return asyncio.get_running_loop().run_in_executor(builder, contextvars.copy_context().run, build)

    answer = await cache.get(key, build_here, rebuild=build)
    if not may_see(owner, answer.owner):
        raise NotFound(not_found)
    if not_modified(request.headers, answer.etag):
        return Response(status_code=304, headers={"ETag": answer.etag})
    return Response(answer.body, media_type="application/json", headers={"ETag": answer.etag})


def forget(request: Request, *job_ids: str) -> None:
    """After a write through the API: drop what this process keeps about these jobs, and tell the
    other API processes to (app.events.changes; they would otherwise see it READ_CACHE_SECONDS later)."""
    for job_id in job_ids:
        forget_job(request.app.state.read_cache, job_id)
        announce_change(request.app.state.redis, request.app.state.settings, job_id, written=True)


def forget_job(cache: ReadCache[OwnedJson], job_id: str) -> None:
    """Drop what `cache` keeps about `job_id` (any thread)."""
    cache.invalidate(lambda key: _of_job(key, job_id))


def renew_job(cache: ReadCache[OwnedJson], job_id: str) -> None:
    """Build again, in the background, what `cache` keeps about `job_id` (the change listener's thread)."""
    cache.renew(lambda key: _of_job(key, job_id))


def _of_job(key: Hashable, job_id: str) -> bool:
    return isinstance(key, tuple) and key[1] == job_id
