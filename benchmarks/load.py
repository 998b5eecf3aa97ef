"""Load: many clients polling, many event streams and a burst of submissions against a running stack.

Loopback only, bounded in count and time. While two searches run (`--searches`), `--clients` clients
poll `GET /searches/{id}` and `GET /searches/{id}/epochs` back to back for `--duration` seconds,
`--sse` clients follow `GET /searches/{id}/events`, and `--burst` searches are submitted at once a
third of the way in (and cancelled right after) by a second process, as another program would. Every
search this run made is cancelled at the end.

    MAX_ACTIVE_SEARCHES_PER_OWNER=300 MAX_SSE_STREAMS_PER_OWNER=64 \\
        darts-service up --data-dir /tmp/load &                 # embedded SQLite + Redis
    python benchmarks/load.py --url http://127.0.0.1:8000 --key "$(cat /tmp/load/admin.key)"

Figures: requests per second, p50/p99/max latency per kind of request, errors (anything but the
expected status, or no answer within `--timeout`; must be 0), and the lag from an epoch's end in the
worker (the time of its Redis stream entry, which the SSE event's id carries) to the first poll that
sees it in `GET /searches/{id}` (p99 at most 250 ms), and to its SSE event. Exit status 1 when there
are errors. Never run as a timed test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from darts_core.client.sse import SSEParser

TERMINAL = {"succeeded", "failed", "cancelled"}
Connect = Callable[[int], aiohttp.ClientSession]  # a new client with that many connections
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
# Idle connections are dropped before uvicorn's 5 s keep-alive timeout closes them: reusing one the
# server is closing fails the request, a client-side race, not a server error.
KEEPALIVE_SECONDS = 3.0


@dataclass(frozen=True)
class Reply:
    """What a request got back: the status and the whole body."""

    status_code: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def session(base_url: str, key: str, connections: int, timeout: float) -> aiohttp.ClientSession:
    """A client (connection pool) with `connections` keep-alive connections, sending the key."""
    return aiohttp.ClientSession(
        base_url=base_url,
        headers={"Authorization": f"Bearer {key}"},
        connector=aiohttp.TCPConnector(limit=connections, keepalive_timeout=KEEPALIVE_SECONDS),
        timeout=aiohttp.ClientTimeout(total=timeout),
    )


def tiny_spec(name: str, epochs: int) -> dict[str, Any]:
    """A search of many short epochs: the figures measure the service, not the search."""
    return {
        "name": name,
        "dataset": {"name": "synthetic", "num_samples": 64, "image_size": 8, "num_classes": 2, "channels": 1},
        "search_space": {
            "primitives": ["none", "skip_connect", "max_pool_3x3", "sep_conv_3x3"],
            "internal_nodes": 2,
        },
        "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
        "training": {"epochs": epochs, "batch_size": 16},
        "resources": {"device": "cpu"},
    }


@dataclass
class Figures:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: list[str] = field(default_factory=list)
    # search id -> epoch -> first time a GET /searches/{id} showed it (epoch >= that epoch)
    first_seen: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    # search id -> epoch -> (XADD time, first SSE arrival)
    sse_seen: dict[str, dict[int, tuple[float, float]]] = field(default_factory=lambda: defaultdict(dict))
    sse_events: int = 0

    def record(
        self,
        kind: str,
        started: float,
        response: Reply | None,
        expected: int,
        error: str | None = None,
    ) -> None:
        self.latencies[kind].append(time.perf_counter() - started)
        if error is not None:
            self.errors.append(f"{kind}: {error}")
        elif response is not None and response.status_code != expected:
            self.errors.append(f"{kind}: HTTP {response.status_code} {response.text[:200]}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def request(
    client: aiohttp.ClientSession,
    figures: Figures,
    kind: str,
    method: str,
    url: str,
    expected: int,
    json_body: object = None,
) -> Reply | None:
    started = time.perf_counter()
    try:
        async with client.request(method, url, json=json_body) as response:
            reply = Reply(response.status, await response.read())
    except (aiohttp.ClientError, TimeoutError) as exc:
        figures.record(kind, started, None, expected, error=f"{type(exc).__name__} {exc}")
        return None
    figures.record(kind, started, reply, expected)
    return reply


async def poller(
    connect: Connect,
    figures: Figures,
    search_ids: list[str],
    index: int,
    deadline: float,
    epochs_limit: int | None = None,
) -> None:
    search_id = search_ids[index % len(search_ids)]
    async with connect(1) as client:
        await _poll(client, figures, search_id, deadline, epochs_limit)


async def _poll(
    client: aiohttp.ClientSession,
    figures: Figures,
    search_id: str,
    deadline: float,
    epochs_limit: int | None = None,
) -> None:
    """`GET /searches/{id}` and its epochs (`?limit=epochs_limit` when given) back to back."""
    query = "" if epochs_limit is None else f"?limit={epochs_limit}"
    kind = "GET /searches/{id}/epochs" + query.replace(str(epochs_limit), "N")
    while time.monotonic() < deadline:
        response = await request(client, figures, "GET /searches/{id}", "GET", f"/searches/{search_id}", 200)
        if response is not None and response.status_code == 200:
            seen = time.time()
            epoch = response.json()["epoch"]
            for e in range(1, epoch + 1):
                figures.first_seen[search_id].setdefault(e, seen)
        await request(client, figures, kind, "GET", f"/searches/{search_id}/epochs{query}", 200)


async def follower(connect: Connect, figures: Figures, search_id: str, deadline: float) -> None:
    started = time.perf_counter()
    stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)  # open for the whole run
    try:
        async with connect(1) as client, client.get(
            f"/searches/{search_id}/events", timeout=stream_timeout
        ) as response:
            opened = Reply(response.status, b"" if response.status == 200 else await response.read())
            figures.record("GET /searches/{id}/events (open)", started, opened, 200)
            if response.status != 200:
                return
            parser = SSEParser()  # darts_core.client.sse: the one parser of the project
            async for raw in response.content:  # one line at a time, with its line ending
                if time.monotonic() >= deadline:
                    return
                event = parser.feed(raw.decode())
                if event is not None and event.event == "epoch":
                    figures.sse_events += 1
                    entry_id = event.id or ""
                    epoch = event.json()["epoch"]
                    if "-" in entry_id:
                        xadd = int(entry_id.split("-")[0]) / 1000
                        figures.sse_seen[search_id].setdefault(epoch, (xadd, time.time()))
    except (aiohttp.ClientError, TimeoutError) as exc:
        figures.errors.append(f"events: {type(exc).__name__} {exc}")


async def burst(args: argparse.Namespace, figures: Figures, created: list[str]) -> float:
    """The burst, sent by a process of its own (`--burst-child`), as separate programs would send it: from
    this process, building and parsing 400 requests at once held up the pollers sharing its event loop
    for 1-2 s, which counted as the server's latency and as the lag of the epochs meanwhile."""
    child = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--url", args.url, "--key", args.key, "--burst", str(args.burst),
        "--epochs", str(args.epochs), "--timeout", str(args.timeout), "--burst-child",
        stdout=asyncio.subprocess.PIPE,
    )
    output, _ = await child.communicate()
    if child.returncode != 0:
        figures.errors.append(f"burst: the burst process exited with {child.returncode}")
        return float("nan")
    report = json.loads(output)
    for kind, values in report["latencies"].items():
        figures.latencies[kind].extend(values)
    figures.errors.extend(report["errors"])
    created.extend(report["created"])
    return float(report["took"])


async def burst_child(args: argparse.Namespace) -> int:
    """`--burst-child`: submit and cancel the burst, print the figures as JSON for the parent process."""
    figures = Figures()
    created: list[str] = []
    async with session(args.url, args.key, args.burst, args.timeout) as client:
        took = await _burst(client, figures, args.burst, args.epochs, created)
    report = {"latencies": figures.latencies, "errors": figures.errors, "created": created, "took": took}
    print(json.dumps(report))
    return 0


async def _burst(
    client: aiohttp.ClientSession, figures: Figures, count: int, epochs: int, created: list[str]
) -> float:
    started = time.perf_counter()
    responses = await asyncio.gather(
        *(
            request(
                client,
                figures,
                "POST /searches (burst)",
                "POST",
                "/searches",
                201,
                json_body=tiny_spec(f"load-burst-{i}", epochs),
            )
            for i in range(count)
        )
    )
    took = time.perf_counter() - started
    created.extend(r.json()["id"] for r in responses if r is not None and r.status_code == 201)
    await asyncio.gather(
        *(
            request(
                client,
                figures,
                "POST /searches/{id}/cancel (burst)",
                "POST",
                f"/searches/{search_id}/cancel",
                202,
            )
            for search_id in created[len(created) - count :]
        )
    )
    return took


async def load(
    args: argparse.Namespace,
    connect: Connect,
    client: aiohttp.ClientSession,
    figures: Figures,
    created: list[str],
) -> tuple[float, tuple[float, float], float]:
    """Submit the searches, then poll, follow and burst. Returns the seconds of load, the burst's
    window (wall-clock start and end of its POSTs and cancels) and the seconds its POSTs took."""
    for i in range(args.searches):
        async with client.post("/searches", json=tiny_spec(f"load-{i}", args.epochs)) as submitted:
            submitted.raise_for_status()
            created.append((await submitted.json())["id"])
    searches = list(created)
    # Wait for the first to run, so that the load overlaps epochs.
    wait_until = time.monotonic() + 120
    while await status_of(client, searches[0]) == "queued":
        if time.monotonic() > wait_until:
            raise SystemExit("the first search did not start within 120 s: is a worker running?")
        await asyncio.sleep(0.2)
    started = time.monotonic()
    deadline = started + args.duration
    pollers = [
        asyncio.create_task(poller(connect, figures, searches, i, deadline, args.epochs_limit))
        for i in range(args.clients)
    ]
    followers = [
        asyncio.create_task(follower(connect, figures, searches[i % len(searches)], deadline))
        for i in range(args.sse)
    ]
    await asyncio.sleep(args.duration / 3)
    burst_started = time.time()
    burst_seconds = await burst(args, figures, created)
    burst_window = (burst_started, time.time())  # the POSTs and their cancels
    outcomes = await asyncio.gather(*pollers, return_exceptions=True)
    for task in followers:  # a follower still reading at the deadline waits for its next line
        task.cancel()
    outcomes += await asyncio.gather(*followers, return_exceptions=True)
    for outcome in outcomes:  # a simulated client that died of something unforeseen is an error
        if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
            figures.errors.append(f"client: {type(outcome).__name__} {outcome}")
    return time.monotonic() - started, burst_window, burst_seconds


async def run(args: argparse.Namespace) -> int:
    def connect(connections: int) -> aiohttp.ClientSession:
        # A client (connection pool) per simulated client, as separate programs would have.
        return session(args.url, args.key, connections, args.timeout)

    figures = Figures()
    created: list[str] = []
    async with connect(10) as client:
        try:
            elapsed, burst_window, burst_seconds = await load(args, connect, client, figures, created)
        finally:
            for search_id in created:  # leave nothing running; a failure here is an error too
                response = await request(
                    client, figures, "cleanup", "POST", f"/searches/{search_id}/cancel", 202
                )
                if response is not None and response.status_code == 409:  # already finished
                    figures.errors.pop()

    lags: list[float] = []
    calm_lags: list[float] = []  # epochs that ended outside the burst's POSTs and cancels
    sse_lags: list[float] = []
    for search_id, epochs in figures.sse_seen.items():
        for epoch, (xadd, arrived) in epochs.items():
            sse_lags.append(arrived - xadd)
            if epoch in figures.first_seen.get(search_id, {}):
                lags.append(figures.first_seen[search_id][epoch] - xadd)
                if not burst_window[0] <= xadd <= burst_window[1]:
                    calm_lags.append(lags[-1])

    polls = sum(
        len(v)
        for k, v in figures.latencies.items()
        if k.startswith("GET /searches/{id}") and "events" not in k
    )
    print(
        f"machine: {platform.node()} {platform.machine()} {os.cpu_count()} cores (shared), python "
        f"{platform.python_version()}, {datetime.now(UTC).isoformat(timespec='seconds')}"
    )
    print(
        f"load: {args.clients} polling clients, {args.sse} SSE followers, {args.searches} searches, "
        f"burst of {args.burst} POSTs at {args.duration / 3:.0f} s, {elapsed:.0f} s"
    )
    print(f"polling: {polls} requests, {polls / elapsed:.0f} req/s")
    for kind, values in sorted(figures.latencies.items()):
        print(
            f"  {kind:38} n={len(values):6}  p50 {percentile(values, 0.5) * 1000:7.1f} ms  "
            f"p99 {percentile(values, 0.99) * 1000:7.1f} ms  max {max(values) * 1000:7.1f} ms"
        )
    print(f"burst: {args.burst} POSTs answered in {burst_seconds:.2f} s")
    print(f"SSE: {figures.sse_events} epoch events received")
    if lags:
        print(
            f"epoch end -> visible in GET /searches/{{id}}, {len(lags)} epochs: p50 "
            f"{percentile(lags, 0.5) * 1000:.0f} ms, p99 {percentile(lags, 0.99) * 1000:.0f} ms, "
            f"max {max(lags) * 1000:.0f} ms"
        )
    if calm_lags:
        window = burst_window[1] - burst_window[0]
        print(
            f"  of which {len(calm_lags)} ended outside the burst ({window:.1f} s of POSTs and cancels): "
            f"p50 {percentile(calm_lags, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(calm_lags, 0.99) * 1000:.0f} ms, max {max(calm_lags) * 1000:.0f} ms"
        )
    if sse_lags:
        print(
            f"epoch end -> SSE event, {len(sse_lags)} events: p50 {percentile(sse_lags, 0.5) * 1000:.0f} ms, "
            f"p99 {percentile(sse_lags, 0.99) * 1000:.0f} ms "
            "(woken by change announcements, else polled every 500 ms)"
        )
    print(f"errors: {len(figures.errors)}")
    for error in figures.errors[:20]:
        print(f"  {error}")
    return 1 if figures.errors else 0


async def status_of(client: aiohttp.ClientSession, search_id: str) -> str:
    async with client.get(f"/searches/{search_id}") as response:
        response.raise_for_status()
        return str((await response.json())["status"])


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """uvloop where it is installed (a dependency of the service): it cuts this process's CPU per request."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="Base URL of the API (loopback only).")
    parser.add_argument("--key", default=os.environ.get("DARTS_KEY"), help="API key (default $DARTS_KEY).")
    parser.add_argument("--clients", type=int, default=100, help="Polling clients (at most 200).")
    parser.add_argument("--sse", type=int, default=50, help="SSE followers (at most 100).")
    parser.add_argument("--burst", type=int, default=200, help="Searches submitted at once (at most 300).")
    parser.add_argument("--searches", type=int, default=2, help="Searches running under the load.")
    parser.add_argument("--duration", type=float, default=60.0, help="Seconds of polling (at most 300).")
    parser.add_argument(
        "--epochs", type=int, default=400, help="Epochs of each search (cancelled at the end)."
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="Seconds before a request counts as an error."
    )
    parser.add_argument(
        "--epochs-limit",
        type=int,
        default=None,
        help="Poll `/epochs?limit=N` instead of `/epochs` (1 to 1000; default: no query string).",
    )
    parser.add_argument("--burst-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in LOOPBACK:
        parser.error(f"--url must be a loopback address, got {args.url}")
    if not args.key:
        parser.error("--key (or $DARTS_KEY) is required: `darts-service up` writes <data-dir>/admin.key")
    if args.epochs_limit is not None and not 1 <= args.epochs_limit <= 1000:
        parser.error(f"--epochs-limit must be 1 to 1000, got {args.epochs_limit}")
    if args.clients > 200 or args.sse > 100 or args.burst > 300 or args.duration > 300:
        parser.error("bounded: --clients <= 200, --sse <= 100, --burst <= 300, --duration <= 300")
    raise SystemExit(run_loop(burst_child(args) if args.burst_child else run(args)))


if __name__ == "__main__":
    main()
