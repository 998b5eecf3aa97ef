"""The API's middleware stack, in the one place that decides its order."""

from __future__ import annotations

from collections.abc import Callable

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import Scope

from app.http.body_limit import BodyLimitMiddleware
from app.http.db_gate import DatabaseGateMiddleware
from app.http.metrics import MetricsMiddleware
from app.http.nul import NulMiddleware
from app.http.polled_read import PolledReadMiddleware
from app.http.request_context import RequestContextMiddleware
from app.services.datasets import too_large_message
from app.settings import Settings

# Multipart framing around an upload's file (boundaries, part headers, a name field).
UPLOAD_FRAMING_BYTES = 64 * 1024


def install_middleware(app: FastAPI, settings: Settings) -> None:
    """Install the middleware over `app`'s routes (after its state is wired: some take parts of it).

    A request passes them in this order, outermost first:

    1. RequestContextMiddleware: the request's id, so every line logged while it is served carries it.
    2. TrustedHostMiddleware: a Host we do not answer is turned away before anything else runs.
    3. CORSMiddleware (only with CORS_ORIGINS).
    4. MetricsMiddleware: counts and times every request, those answered further in from the caches too.
    5. PolledReadMiddleware: polls answered from the caches skip the gate and the framework.
    6. DatabaseGateMiddleware: innermost of the counted ones, so the metrics' latency includes the wait
       at the gate.
    7. NulMiddleware: 422 for a NUL in the path or the query.
    8. BodyLimitMiddleware: 413 for a body above the limit.

    Starlette runs the middleware added last first, so they are added here from the innermost out.
    """
    app.add_middleware(BodyLimitMiddleware, limit_for=body_limit_of(settings))
    app.add_middleware(NulMiddleware)
    app.add_middleware(DatabaseGateMiddleware, gate=app.state.db_gate)
    app.add_middleware(
        PolledReadMiddleware,
        read_cache=app.state.read_cache,
        key_cache=app.state.key_cache,
        no_auth=settings.no_auth,
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Location"],
        )
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=settings.allowed_hosts)
    app.add_middleware(RequestContextMiddleware)


def body_limit_of(settings: Settings) -> Callable[[Scope], tuple[int, str]]:
    """The body limit of a request, and the detail of its 413 (BodyLimitMiddleware's `limit_for`)."""

    def body_limit(scope: Scope) -> tuple[int, str]:
        if scope["path"].rstrip("/") == "/datasets":
            # The upload route caps the file itself while it streams; this bounds the whole body.
            return settings.max_upload_bytes + UPLOAD_FRAMING_BYTES, too_large_message(settings)
        limit = settings.max_body_bytes
        return limit, f"request body larger than the limit of {limit} bytes (MAX_BODY_BYTES)"

    return body_limit
