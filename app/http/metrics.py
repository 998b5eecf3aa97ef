"""`MetricsMiddleware`: every HTTP request counted and timed into the app's `ServiceMetrics`."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.services.metrics import ServiceMetrics

# The method label takes these values and "other": a client's made-up method must not add series.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class MetricsMiddleware:
    """Counts requests and times them to the start of the response (SSE streams are long by design)."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_code = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                route = scope.get("route")
                # The route template, never the raw path: ids would make the label set unbounded.
                template = getattr(route, "path", None) or "unmatched"
                method = scope["method"] if scope["method"] in KNOWN_METHODS else "other"
                self.metrics.latency.labels(method, template).observe(time.perf_counter() - started)
                self.metrics.requests.labels(method, template, str(status_code)).inc()
            await send(message)

        await self.app(scope, receive, send_and_record)
