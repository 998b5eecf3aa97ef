"""Which workers are consuming, and on what device: the liveness keys the workers keep in Redis.

Each worker (`worker/health.py`) sets `{prefix}:workers:<hostname>` with a short TTL while its consumer
loop ticks or a task runs; a worker that dies stops refreshing it and its key expires. `/readyz` counts
these keys (`count_workers`). The key lives in Redis, the broker the workers consume from: a worker that
cannot reach it is not consuming either.

The key's value (`encode_heartbeat`) says when it was written and the worker's device: `cpu`, or `cuda`
with the GPU's name and total memory as torch reports them for the worker's visible device. Admission
reads them (`worker_devices`) to compare a CUDA job's estimate with the GPU memory of the workers that
can take it (app.services.admission). A value that is not such JSON (an older worker) counts as a worker
of unknown device.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import redis


@dataclass(frozen=True)
class WorkerDevice:
    """A worker's device as its heartbeat reports it: `device` "cpu", "cuda" or "unknown"; for "cuda",
    the GPU's `name` and `memory_bytes` (total memory); `at`, the Unix time the beat was written (None
    when the value does not say)."""

    hostname: str
    device: str
    name: str | None = None
    memory_bytes: int | None = None
    at: float | None = None

    def as_json(self) -> dict[str, Any]:
        return {"device": self.device, "name": self.name, "memory_bytes": self.memory_bytes}


def heartbeat_key(prefix: str, hostname: str) -> str:
    """The liveness key of worker `hostname` (the one definition; worker/health.py writes it)."""
    return f"{prefix}:workers:{hostname}"


def encode_heartbeat(at: float, device: WorkerDevice) -> str:
    """The value of a worker's liveness key: the time it was written and its device, as JSON."""
    return json.dumps({"at": round(at, 3), **device.as_json()})


def decode_heartbeat(hostname: str, value: str | bytes | None) -> WorkerDevice:
    """The device a liveness key's value reports ("unknown" for anything but `encode_heartbeat`'s JSON)."""
    try:
        data = json.loads(value) if value is not None else None
    except ValueError:
        data = None
    if isinstance(data, int | float) and not isinstance(data, bool):  # a worker from before devices
        return WorkerDevice(hostname, "unknown", at=float(data))
    at = data.get("at") if isinstance(data, dict) else None
    at = float(at) if isinstance(at, int | float) and not isinstance(at, bool) else None
    if not isinstance(data, dict) or data.get("device") not in ("cpu", "cuda"):
        return WorkerDevice(hostname, "unknown", at=at)
    memory = data.get("memory_bytes")
    counted = isinstance(memory, int) and not isinstance(memory, bool) and memory > 0
    name = data.get("name")
    return WorkerDevice(
        hostname,
        data["device"],
        name=name if isinstance(name, str) else None,
        memory_bytes=memory if counted else None,
        at=at,
    )


def count_workers(client: redis.Redis, prefix: str) -> int:
    """Workers whose liveness key has not expired (SCAN: one key per worker process)."""
    return sum(1 for _ in client.scan_iter(match=heartbeat_key(prefix, "*"), count=100))


def worker_devices(client: redis.Redis, prefix: str) -> list[WorkerDevice]:
    """The devices of the workers whose liveness key has not expired, by hostname."""
    keys = sorted(client.scan_iter(match=heartbeat_key(prefix, "*"), count=100))
    if not keys:
        return []
    start = len(heartbeat_key(prefix, ""))
    values: list[Any] = client.mget(keys)
    names = [key.decode() if isinstance(key, bytes) else str(key) for key in keys]
    return [decode_heartbeat(name[start:], value) for name, value in zip(names, values, strict=True)]
