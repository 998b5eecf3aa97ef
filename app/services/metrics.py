"""Prometheus metrics of one app: request counts and latency (recorded by app.http.metrics), and what is read
at scrape time: searches and trainings by status (SQL), the queue's depth and the workers' heartbeats (Redis).

Each app gets its own registry, so several apps in one process (the tests) never collide. The
ingester's metrics are process-wide (app/event_metrics.py); `/metrics` serves both.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.orm import Session, sessionmaker

from app.lifecycle.kinds import SEARCH, TRAINING, JobKind
from app.services.jobs import count_by_status
from app.settings import Settings
from app.worker_heartbeat import decode_heartbeat

logger = logging.getLogger(__name__)


class SearchesByStatusCollector(Collector):
    """`darts_searches{status=...}` (or, with `kind` TRAINING, `darts_trainings{status=...}`): the number
    of jobs of the kind in each status, counted at scrape time."""

    def __init__(self, session_factory: sessionmaker[Session], kind: JobKind = SEARCH) -> None:
        self.session_factory = session_factory
        self.kind = kind

    def collect(self) -> Iterator[GaugeMetricFamily]:
        table = self.kind.model.__tablename__  # "searches", "trainings"
        name = f"darts_{table}"
        gauge = GaugeMetricFamily(name, f"{table.capitalize()} by status", labels=["status"])
        try:
            with self.session_factory() as session:
                counts = count_by_status(session, self.kind)
        except Exception as exc:  # a scrape must not fail because the database is down
            logger.warning("%s not collected: %s", name, exc)
            return
        for status, count in counts.items():
            gauge.add_metric([status], count)
        yield gauge


class QueueDepthCollector(Collector):
    """`darts_queue_depth{queue=...}`: messages waiting in the Celery queue (Redis lists, read at scrape
    time). Kombu's Redis transport keeps one list per priority step next to the queue's own."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.queue = settings.celery_queue
        # The `global_keyprefix` of worker/celery_app.py, which Kombu puts before every key.
        self.key = f"{settings.redis_prefix}:celery:{settings.celery_queue}"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("darts_queue_depth", "Searches waiting in the queue", labels=["queue"])
        try:
            keys = [self.key, *(f"{self.key}\x06\x16{step}" for step in range(1, 10))]
            pipeline = self.client.pipeline(transaction=False)
            for key in keys:
                pipeline.llen(key)
            depth = sum(pipeline.execute())
        except redis.RedisError as exc:
            logger.warning("darts_queue_depth not collected: %s", exc)
            return
        gauge.add_metric([self.queue], depth)
        yield gauge


class WorkerHeartbeatCollector(Collector):
    """`darts_worker_heartbeat_timestamp_seconds{worker=...}` and `darts_workers`: the workers whose
    heartbeat key (worker/health.py, TTL 30 s) is in Redis. Workers that stopped drop out with their
    key, so the label set stays the set of live workers."""

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.client = client
        self.pattern = f"{settings.redis_prefix}:workers:*"

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            keys = sorted(self.client.scan_iter(match=self.pattern, count=1000))
            values = self.client.mget(keys) if keys else []
        except redis.RedisError as exc:
            logger.warning("worker heartbeats not collected: %s", exc)
            return
        beats = GaugeMetricFamily(
            "darts_worker_heartbeat_timestamp_seconds",
            "Unix time of each live worker's last heartbeat",
            labels=["worker"],
        )
        alive = 0
        for key, value in zip(keys, values, strict=True):
            if value is None:  # expired between SCAN and MGET
                continue
            name = key.decode() if isinstance(key, bytes) else key
            worker = name.rsplit(":workers:", 1)[-1]
            at = decode_heartbeat(worker, value).at
            if at is not None:
                beats.add_metric([worker], at)
            alive += 1
        yield beats
        yield GaugeMetricFamily("darts_workers", "Workers with a live heartbeat", value=alive)


class ServiceMetrics:
    def __init__(
        self,
        session_factory: sessionmaker[Session],
        client: redis.Redis | None = None,
        settings: Settings | None = None,
    ) -> None:
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
        self.registry.register(SearchesByStatusCollector(session_factory, TRAINING))
        if client is not None and settings is not None:
            self.registry.register(QueueDepthCollector(client, settings))
            self.registry.register(WorkerHeartbeatCollector(client, settings))
