"""The FastAPI application factory.

Run it with `uvicorn --factory app.main:create_app` (or `darts-service up`). Nothing is built at import
time, and building the app connects to nothing: the database, Redis and the broker are reached on first
use, so `create_app()` works before they are up (and `/readyz` says when they are).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.db import make_engine, make_session_factory
from app.db_gate import DatabaseGate
from app.events.changes import ChangeListener
from app.events.ingester import start_ingester
from app.http.install import install_middleware
from app.logging_config import configure_logging, logging_configured
from app.queue import create_celery_app
from app.redis import get_redis
from app.routes import datasets, docs, health, searches, studies, trainings
from app.routes.polled import forget_job, renew_job
from app.services import admission
from app.services.epoch_pages import EpochJsonCache
from app.services.errors import ServiceError
from app.services.job_feed import JobFeeds, OpenStreams
from app.services.metrics import ServiceMetrics
from app.services.read_cache import ReadCache
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
SSE_POLL_SECONDS = 0.5
# The page runs only the app's own script files: no inline script, nothing from elsewhere, not framed.
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def _flat_routes(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)  # an included router (newer FastAPI)
        yield from _flat_routes(inner.routes) if inner is not None else (route,)


def _allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods of the path template a path routes to (the `Allow` of a 405), as the OpenAPI
    schema lists them: `/searches/estimate` is POST only, though GET `/searches/{id}` would take it."""
    routes = [r for r in _flat_routes(app.router.routes) if getattr(r, "methods", None)]
    template = next((r.path for r in routes if r.path_regex.match(path)), None)
    methods = set().union(*(r.methods for r in routes if r.path == template))
    return sorted(methods)
# Database connections kept for the pollers of Server-Sent Events (app.services.job_feed).
FEED_SLOTS = 2
# Database connections kept for the lookups of API keys (app.auth).
KEY_SLOTS = 1
# Database connections kept for building the answers clients poll (app.routes.polled): one thread
# each, which also renews them when another process announces a change (app.services.read_cache).
POLL_SLOTS = 1


_freeze_lock = threading.Lock()


def _preload_then_freeze() -> None:
    """Import what admission estimates need (torch among it), then exempt every object alive by then
    from the garbage collector's full collections (`gc.freeze`), once per process.

    Why: the imports leave 270,000 objects the collector tracks (126,000 of the app's, 143,000 more
    of torch's), and under 100 pollers the API ran a full collection about once a second, each
    traversing them all: 160-175 ms in which the event loop answered nothing (issue 10's epoch lag
    p99; 10 ms after this). They live as long as the process anyway. Garbage is collected first, so
    that none of it is kept for good (a test process builds many apps).
    """
    admission.preload()
    with _freeze_lock:
        if gc.get_freeze_count() == 0:  # not frozen yet in this process
            gc.collect()
            gc.freeze()


def _poll_builder() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(POLL_SLOTS, thread_name_prefix="poll-build")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """What runs while the app serves: the preload, the ingester (when `run_ingester`) and the change
    listener; on the way out everything the app holds is stopped or closed."""
    settings: Settings = app.state.settings
    # In the background: the API answers at once; a submission arriving meanwhile waits for the
    # import (Python's import lock) instead of starting it under load.
    threading.Thread(target=_preload_then_freeze, name="preload-estimate", daemon=True).start()
    app.state.ingester = start_ingester(settings) if app.state.run_ingester else None
    read_cache: ReadCache[Any] = app.state.read_cache
    feeds: JobFeeds = app.state.job_feeds
    loop = asyncio.get_running_loop()

    def on_change(job_id: str, written: bool) -> None:  # in the listener's thread
        try:
            if written:
                forget_job(read_cache, job_id)
            else:
                renew_job(read_cache, job_id)
        finally:
            with contextlib.suppress(RuntimeError):  # the loop closed: the app is going away
                loop.call_soon_threadsafe(feeds.announce, job_id)

    listener = ChangeListener(app.state.redis, settings, on_change)
    app.state.change_listener = listener.start()
    try:
        yield
    finally:
        listener.stop()
        app.state.poll_builder.shutdown(wait=False, cancel_futures=True)
        app.state.poll_builder = _poll_builder()  # threads start on first use: for a next lifespan
        if app.state.ingester is not None:
            app.state.ingester.stop()
        app.state.redis.close()
        app.state.engine.dispose()


def wire_state(app: FastAPI, settings: Settings, *, run_ingester: bool) -> None:
    """What the routes, the middleware and the lifespan share, on `app.state`. Connects to nothing."""
    engine = make_engine(settings)
    app.state.settings = settings
    app.state.run_ingester = run_ingester
    app.state.engine = engine
    app.state.session_factory = make_session_factory(engine)
    app.state.celery = create_celery_app(settings)
    app.state.redis = get_redis(settings)
    app.state.metrics = ServiceMetrics(app.state.session_factory, app.state.redis, settings)
    app.state.sse_poll_seconds = SSE_POLL_SECONDS
    # Requests and the event streams' pollers have slots of their own (together: the pool), so a
    # stream's poll never queues behind a crowd of requests.
    # The gates together hold exactly the pool's connections (DB_POOL_SIZE is at least 4).
    feed_slots = min(FEED_SLOTS, settings.db_pool_size - 1 - KEY_SLOTS - POLL_SLOTS)
    app.state.db_gate = DatabaseGate(settings.db_pool_size - feed_slots - KEY_SLOTS - POLL_SLOTS)
    app.state.feed_gate = DatabaseGate(feed_slots)
    # API keys are looked up under a gate of their own: requests holding every slot of the request gate
    # may all be waiting for one key's lookup (app.services.read_cache shares it), which must not need
    # one of their slots.
    app.state.key_gate = DatabaseGate(KEY_SLOTS)
    # The builds of what clients poll (app.routes.polled) likewise: behind a burst of 200 submissions
    # in the request gate's queue, a poll's rebuild waited 2 s, and every follower with it. Threads of
    # their own, not a gate on the event loop: the change listener hands them renewals directly.
    app.state.poll_builder = _poll_builder()
    app.state.job_feeds = JobFeeds(app.state.session_factory, app.state.feed_gate)
    app.state.open_streams = OpenStreams()
    app.state.epoch_json = EpochJsonCache()
    app.state.read_cache = ReadCache(
        settings.read_cache_seconds,
        renew_in=lambda work: app.state.poll_builder.submit(work),
        weigh=lambda answer: len(answer.body),
        max_weight=settings.read_cache_max_bytes,
    )
    app.state.key_cache = ReadCache(settings.key_cache_seconds)


def add_error_handlers(app: FastAPI) -> None:
    """`ServiceError`s as `{"detail": ...}` with their status; a 405 naming every allowed method."""

    @app.exception_handler(ServiceError)
    async def service_error_handler(_request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error_handler(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names only the first matching route's methods; GET and POST /searches are two.
            allow = ", ".join(_allowed_methods(app, request.url.path))
            headers = {**(exc.headers or {}), "Allow": allow}
            exc = StarletteHTTPException(405, detail=exc.detail, headers=headers)
        return await http_exception_handler(request, exc)


def add_routes(app: FastAPI) -> None:
    """The API's routers, the page and its static files."""
    app.include_router(searches.router)
    app.include_router(studies.router)
    app.include_router(trainings.router)
    app.include_router(datasets.router)
    app.include_router(health.router)
    app.include_router(docs.router)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(
            WEB_DIR / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP}
        )

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")


def create_app(settings: Settings | None = None, *, run_ingester: bool | None = None) -> FastAPI:
    """The API over `settings` (default: the environment).

    `run_ingester` (default: the RUN_INGESTER setting) starts the Redis-stream -> SQL event ingester,
    with the lifecycle's sweeps, in a thread of this process and stops it on shutdown.
    """
    settings = settings or get_settings()
    if not logging_configured():
        # Run by `uvicorn --factory` (the image): uvicorn's loggers join ours. `darts-service up` and
        # the other commands have configured logging before.
        configure_logging(settings.log_level, settings.log_format)
    if run_ingester is None:
        run_ingester = settings.run_ingester
    app = FastAPI(
        title="darts-service",
        version="1",
        summary="Neural architecture search (DARTS) as a service",
        lifespan=lifespan,
        # app.routes.docs serves these behind the API key (unless DOCS_PUBLIC).
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    wire_state(app, settings, run_ingester=run_ingester)
    add_error_handlers(app)
    install_middleware(app, settings)
    add_routes(app)
    return app
