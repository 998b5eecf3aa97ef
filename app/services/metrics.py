"""Prometheus metrics of one app: request counts and latency (an ASGI middleware), searches by status.

Each app gets its own registry, so several apps in one process (the tests) never collide.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.services.searches import count_by_status

logger = logging.getLogger(__name__)


class SearchesByStatusCollector(Collector):
    """`darts_searches{status=...}`: the number of searches in each status, counted at scrape time."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("darts_searches", "Searches by status", labels=["status"])
        try:
            with self.session_factory() as session:
                counts = count_by_status(session)
        except Exception as exc:  # a scrape must not fail because the database is down
            logger.warning("darts_searches not collected: %s", exc)
            return
        for status, count in counts.items():
            gauge.add_metric([status], count)
        yield gauge


class ServiceMetrics:
    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "darts_http_requests",
            "HTTP requests by method, route template and status code",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "darts_http_request_duration_seconds",
            "Time to the response's start, by method and route template",
            ["method", "route"],
            registry=self.registry,
        )
        self.registry.register(SearchesByStatusCollector(session_factory))


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
