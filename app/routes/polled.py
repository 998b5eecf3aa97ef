"""The reads clients poll: a search or a training (`GET /searches/{id}`, `GET /trainings/{id}`) and the
first page of its epochs (`.../epochs`), answered from the API process's read cache
(app.services.read_cache) and shown only to an owner who may see them (404 otherwise, the same answer
as for a job that does not exist).

Two ways in. The routes (`owned_json`) build an answer, keep it and check the owner. Then, while the
answer and the request's API key are both still kept, `app.http.polled_read` gives the same bytes to
the same kind of request without running the routing, the dependencies and the route: a poll costs a
dictionary lookup instead of a trip through the framework (most of the API's time under 100 pollers).
Anything else (another key, a query string, a miss) goes on to the routes.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Callable, Hashable
from concurrent.futures import Executor

from fastapi import Request, Response
from sqlalchemy.orm import Session, sessionmaker

from app.auth import may_see
from app.db_gate import run_with_connection
from app.events.changes import announce_change
from app.services.errors import NotFound
from app.services.job_json import OwnedJson
from app.services.keys import Owner
from app.services.read_cache import ReadCache

MAX_EPOCHS_PAGE = 1000  # the largest page of epochs, and the page a request without `?limit=` gets
FIRST_EPOCHS_PAGE = (0, MAX_EPOCHS_PAGE)  # (after, limit) of the page clients poll

def read_key(kind: str, job_id: str, page: tuple[int, int] | None = None) -> tuple[Hashable, ...]:
    """The cache key of a job (`kind`: "searches" or "trainings") or of its epochs `page` (after, limit)."""
    return (kind, job_id, page)


def is_polled(key: tuple[Hashable, ...]) -> bool:
    """A job's key, or its first page of epochs (what PolledReadMiddleware serves)."""
    return key[2] in (None, FIRST_EPOCHS_PAGE)


async def owned_json(
    request: Request,
    owner: Owner,
    key: tuple[Hashable, ...],
    read: Callable[[Session], OwnedJson],
    not_found: str,
) -> Response:
    """The JSON `read` builds for `key` (a `read_key`), kept READ_CACHE_SECONDS when it is a key clients
    poll: a job, or the first page of its epochs (`is_polled`); other pages are built each time (the
    client picks them, and one can be megabytes)."""
    factory: sessionmaker[Session] = request.app.state.session_factory

    def build() -> OwnedJson:
        with factory() as session:
            return read(session)

    if is_polled(key):
        # Built by threads of their own (POLL_SLOTS): never queued behind a crowd of other requests.
        cache: ReadCache[OwnedJson] = request.app.state.read_cache
        builder: Executor = request.app.state.poll_builder

        def build_here() -> Awaitable[OwnedJson]:
            # With the request's context (its id in the logs), as the thread pool would.
            return asyncio.get_running_loop().run_in_executor(builder, contextvars.copy_context().run, build)

        resource_owner, body = await cache.get(key, build_here, rebuild=build)
    else:
        resource_owner, body = await run_with_connection(request, build)
    if not may_see(owner, resource_owner):
        raise NotFound(not_found)
    return Response(body, media_type="application/json")


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
