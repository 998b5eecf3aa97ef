"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from app.auth import UNAUTHORIZED_RESPONSE, MetricsAccess
from app.routes.responses import errors
from app.worker_heartbeat import count_workers

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])

# An ingester round blocks at most a second on XREADGROUP; far longer means it is stuck.
STALLED_INGESTER_SECONDS = 30.0


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


def _check_database(request: Request) -> str:
    try:
        with request.app.state.session_factory() as session:
            session.execute(text("SELECT 1"))
        return "ok"
    except Exception:  # any failure means "not ready"; the reason goes to the log, never to the client
        logger.warning("readiness: the database does not answer", exc_info=True)
        return "unreachable"


def _check_redis(request: Request) -> str:
    try:
        request.app.state.redis.ping()
        return "ok"
    except Exception:
        logger.warning("readiness: Redis does not answer", exc_info=True)
        return "unreachable"


def _check_ingester(request: Request) -> dict[str, str]:
    """The in-process ingester, when this API runs one: its thread alive and its rounds going on."""
    handle = getattr(request.app.state, "ingester", None)
    if handle is None:
        return {}
    health = handle.health()
    if not health["alive"]:
        return {"ingester": "error: the ingester thread is not running"}
    if health["last_round_seconds_ago"] > STALLED_INGESTER_SECONDS:
        return {"ingester": f"error: no round completed for {health['last_round_seconds_ago']:.0f} s"}
    return {"ingester": "ok"}


def _supervised_parts(request: Request) -> dict[str, str]:
    """`darts-service up`'s children (embedded Redis, worker): running, or being restarted."""
    parts = getattr(request.app.state, "supervised", [])
    return {part.name: "ok" if part.state == "running" else f"error: {part.state}" for part in parts}


def _workers(request: Request) -> dict[str, Any]:
    """Workers consuming the queue (fresh heartbeats). None consuming does not make the API unready:
    the API still accepts searches, which wait in the queue; the count says why nothing runs."""
    settings = request.app.state.settings
    try:
        consuming = count_workers(request.app.state.redis, settings.redis_prefix)
    except Exception:
        logger.warning("could not count the workers", exc_info=True)
        return {"consuming": None, "detail": "unknown: Redis did not answer"}
    detail = "ok" if consuming else "no worker consuming: searches wait in the queue until one starts"
    return {"consuming": consuming, "detail": detail}


@router.get("/readyz", responses=errors(503))
async def readyz(request: Request) -> Any:
    """Readiness: the database and Redis answer, the ingester runs, `up`'s children are up. 503 names
    the part that is not ready, and only that (exception texts would show addresses and paths).
    `workers` counts the workers consuming the queue (heartbeats in Redis); none consuming is reported
    ("no worker consuming") but leaves the API ready: it still takes searches."""
    checks = {
        "database": await run_in_threadpool(_check_database, request),
        "redis": await run_in_threadpool(_check_redis, request),
        **_check_ingester(request),
        **_supervised_parts(request),
    }
    workers = await run_in_threadpool(_workers, request)
    failing = [name for name, result in checks.items() if result != "ok"]
    if failing:
        return JSONResponse(
            {"detail": f"not ready: {', '.join(failing)} unreachable", "checks": checks, "workers": workers},
            status_code=503,
        )
    return {"status": "ready", "checks": checks, "workers": workers}


@router.get(
    "/metrics", response_class=Response, dependencies=[MetricsAccess], responses=UNAUTHORIZED_RESPONSE
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests by route and status, request latency, searches by status, plus the
    process-wide ones (the in-process ingester's event counts, process and Python runtime). Needs an API
    key unless METRICS_PUBLIC is set."""

    def render() -> bytes:
        return generate_latest(request.app.state.metrics.registry) + generate_latest(REGISTRY)

    body = await run_in_threadpool(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
