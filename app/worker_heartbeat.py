"""Which workers are consuming: the liveness keys the workers keep in Redis.

Each worker (`worker/health.py`) sets `{prefix}:workers:<hostname>` with a short TTL while its consumer
loop ticks or a task runs; a worker that dies stops refreshing it and its key expires. `/readyz` counts
these keys (`count_workers`). The key lives in Redis, the broker the workers consume from: a worker that
cannot reach it is not consuming either.
"""

from __future__ import annotations

import redis


def heartbeat_key(prefix: str, hostname: str) -> str:
    """The liveness key of worker `hostname` (the one definition; worker/health.py writes it)."""
    return f"{prefix}:workers:{hostname}"


def count_workers(client: redis.Redis, prefix: str) -> int:
    """Workers whose liveness key has not expired (SCAN: one key per worker process)."""
    return sum(1 for _ in client.scan_iter(match=heartbeat_key(prefix, "*"), count=100))
