"""Redis connections: `get_redis(settings)` is how every part of the service (API, ingester, worker)
talks to Redis. The embedded server of `darts-service up` is `app.stack.embedded_redis`."""

from __future__ import annotations

import redis

from app.settings import Settings


def get_redis(settings: Settings, *, decode_responses: bool = True) -> redis.Redis:
    """A redis-py client for `settings.redis_url` (`redis://`, `rediss://` or `unix://` URLs).

    Raises RuntimeError when `REDIS_URL` is unset: only `darts-service up` starts an embedded server
    and hands its URL to every process it starts.
    """
    if not settings.redis_url:
        raise RuntimeError("REDIS_URL is not set: start the stack with `darts-service up` or set REDIS_URL")
    return redis.Redis.from_url(
        settings.redis_url, decode_responses=decode_responses, health_check_interval=30
    )
