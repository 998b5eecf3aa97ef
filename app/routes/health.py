"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from app.routes.responses import errors

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


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


@router.get("/readyz", responses=errors(503))
async def readyz(request: Request) -> Any:
    """Readiness: the database and Redis both answer. 503 names the one that does not (and only that:
    exception texts would show server addresses and paths)."""
    checks = {
        "database": await run_in_threadpool(_check_database, request),
        "redis": await run_in_threadpool(_check_redis, request),
    }
    failing = [name for name, result in checks.items() if result != "ok"]
    if failing:
        return JSONResponse(
            {"detail": f"not ready: {', '.join(failing)} unreachable", "checks": checks}, status_code=503
        )
    return {"status": "ready", "checks": checks}


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests by route and status, request latency, searches by status, plus the
    process-wide ones (the in-process ingester's event counts, process and Python runtime)."""

    def render() -> bytes:
        return generate_latest(request.app.state.metrics.registry) + generate_latest(REGISTRY)

    body = await run_in_threadpool(render)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
