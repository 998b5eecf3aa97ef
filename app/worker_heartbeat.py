"""Which workers are consuming: each worker process refreshes a Redis key with a time to live.

A worker (`python -m worker`) runs `start_heartbeat` in a daemon thread: every `HEARTBEAT_SECONDS` it
sets `{prefix}:worker:{node}` to expire after `HEARTBEAT_TTL_SECONDS`. A worker that dies (kill -9,
OOM, a host gone) stops refreshing and its key expires. `/readyz` counts the keys (`count_workers`).
The key lives in Redis, the broker the workers consume from: a worker that cannot reach it is not
consuming either.
"""

from __future__ import annotations

import logging
import threading

import redis

from app.redis import get_redis
from app.settings import Settings

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 2.0
HEARTBEAT_TTL_SECONDS = 6


def heartbeat_key(prefix: str, node: str) -> str:
    return f"{prefix}:worker:{node}"


def count_workers(client: redis.Redis, prefix: str) -> int:
    """Workers whose heartbeat has not expired (SCAN: the keys are few, one per worker process)."""
    return sum(1 for _ in client.scan_iter(match=heartbeat_key(prefix, "*"), count=100))


def start_heartbeat(settings: Settings, node: str) -> threading.Event:
    """Refresh this worker's key until the returned event is set (or the process ends)."""
    stop = threading.Event()
    client = get_redis(settings)
    key = heartbeat_key(settings.redis_prefix, node)

    def beat() -> None:
        while not stop.is_set():
            try:
                client.set(key, "1", ex=HEARTBEAT_TTL_SECONDS)
            except (redis.RedisError, OSError) as exc:  # Redis away: no heartbeat, retried
                logger.debug("worker heartbeat not sent: %s", exc)
            stop.wait(HEARTBEAT_SECONDS)
        try:
            client.delete(key)
        except (redis.RedisError, OSError):
            pass  # it expires

    threading.Thread(target=beat, name="worker-heartbeat", daemon=True).start()
    return stop
