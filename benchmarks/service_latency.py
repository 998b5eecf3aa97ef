"""Service latency: POST -> worker started, and an epoch's end in the worker -> visible in GET.

Needs a running stack (`darts-service up`, or the compose deployment) and its Redis, whose stream
entry ids carry the XADD time of every epoch event (the moment the worker finished that epoch).

    darts-service up --data-dir /tmp/latency &            # embedded SQLite + Redis
    python benchmarks/service_latency.py --url http://127.0.0.1:8000 --key "$(cat /tmp/latency/admin.key)" \
        --redis-url unix:///tmp/latency/redis/redis.sock --prefix darts

Prints the machine, then median/p90/max figures. Never run as a timed test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime

import httpx
import redis

TERMINAL = {"succeeded", "failed", "cancelled"}


def tiny_spec(epochs: int) -> dict:
    """A search of a few seconds: the figures measure the service, not the search."""
    return {
        "name": "latency-probe",
        "dataset": {"name": "synthetic", "num_samples": 64, "image_size": 8, "num_classes": 2, "channels": 1},
        "search_space": {"primitives": ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"],
                         "internal_nodes": 2},
        "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
        "training": {"epochs": epochs, "batch_size": 16},
        "resources": {"device": "cpu"},
    }


def parse_time(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Base URL of the API.")
    parser.add_argument("--redis-url", required=True, help="The stack's Redis (redis:// or unix://).")
    parser.add_argument("--prefix", default="darts", help="The stack's REDIS_PREFIX.")
    parser.add_argument("--key", default=os.environ.get("DARTS_KEY"), help="API key (default $DARTS_KEY).")
    parser.add_argument("--epochs", type=int, default=8, help="Epochs per probe search.")
    parser.add_argument("--searches", type=int, default=3, help="Probe searches to run.")
    parser.add_argument("--poll", type=float, default=0.01, help="Seconds between GETs.")
    args = parser.parse_args()

    stream = redis.Redis.from_url(args.redis_url, decode_responses=True)
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    client = httpx.Client(base_url=args.url, timeout=10, headers=headers)
    start_delays: list[float] = []
    visibility: list[float] = []
    for _ in range(args.searches):
        search_id = client.post("/searches", json=tiny_spec(args.epochs)).raise_for_status().json()["id"]
        first_seen: dict[int, float] = {}
        while True:
            resource = client.get(f"/searches/{search_id}").json()
            first_seen.setdefault(resource["epoch"], time.time())
            if resource["status"] in TERMINAL:
                break
            time.sleep(args.poll)
        if resource["status"] != "succeeded":
            raise SystemExit(f"probe search {search_id} ended {resource['status']}: {resource['error']}")
        start_delays.append(parse_time(resource["started_at"]) - parse_time(resource["created_at"]))
        for entry_id, fields in stream.xrange(f"{args.prefix}:events"):
            event = json.loads(fields["data"])
            # The last epoch shares its GET with the terminal status; the others are a clean signal.
            if event["search_id"] == search_id and event["type"] == "epoch" and event["epoch"] < args.epochs:
                if event["epoch"] in first_seen:
                    xadd_time = int(entry_id.split("-")[0]) / 1000
                    visibility.append(first_seen[event["epoch"]] - xadd_time)

    print(f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores, python "
          f"{platform.python_version()}, {datetime.now().isoformat(timespec='seconds')}")
    print(f"POST -> running (started_at - created_at), {len(start_delays)} searches: "
          f"median {statistics.median(start_delays) * 1000:.0f} ms, max {max(start_delays) * 1000:.0f} ms")
    print(f"epoch end (XADD) -> visible in GET /searches/{{id}}, {len(visibility)} epochs, "
          f"{args.poll * 1000:.0f} ms polling: median {statistics.median(visibility) * 1000:.0f} ms, "
          f"p90 {percentile(visibility, 0.9) * 1000:.0f} ms, max {max(visibility) * 1000:.0f} ms")


if __name__ == "__main__":
    main()
