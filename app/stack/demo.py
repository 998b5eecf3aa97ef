"""`python -m app.stack.demo` (`make demo`): a real DARTS search through the whole service.

Starts `darts-service up` on a free port with its data under `.darts/demo`, submits a search on the
built-in `digits` dataset through the REST API with the stack's admin key (`.darts/demo/admin.key`,
written by `up` at its first start), follows it over Server-Sent Events printing every epoch, prints
the genotype found, and stops the stack. Exits 1 if the search does not succeed.
A few minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from app.commands.keys import ADMIN_KEY_FILE
from app.stack.processes import die_with_parent

# Small enough for a few minutes on 2 CPU cores, big enough to learn digits.
DEMO_SPEC: dict[str, Any] = {
    "name": "demo: digits",
    "dataset": {"name": "digits"},
    "search_space": {"internal_nodes": 3},
    "network": {"cells": 5, "init_channels": 8, "stem_multiplier": 3},
    "training": {"epochs": 15, "batch_size": 64, "seed": 0},
}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _sse_events(client: httpx.Client, path: str) -> Iterator[tuple[str, Any]]:
    """Yield (event, data) pairs of an SSE response until the server ends it."""
    from darts_core.client.sse import iter_sse  # the one SSE parser (the `darts` client's)

    with client.stream("GET", path, timeout=httpx.Timeout(10.0, read=None)) as response:
        response.raise_for_status()
        for event in iter_sse(response.iter_lines()):
            yield event.event, event.json()


def _format_epoch(record: dict[str, Any], total: int) -> str:
    return (
        f"epoch {record['epoch']:>3}/{total}"
        f"  train loss {record['train_loss']:.3f} acc {record['train_acc']:.3f}"
        f"  valid loss {record['valid_loss']:.3f} acc {record['valid_acc']:.3f}"
        f"  lr {record['lr']:.4f}  {record['seconds']:.1f} s"
    )


def _format_genotype(genotype: dict[str, Any]) -> str:
    lines = []
    for cell in ("normal", "reduce"):
        edges = genotype[cell]
        nodes = [edges[i : i + 2] for i in range(0, len(edges), 2)]
        lines.append(f"  {cell} cell (output = concat of nodes {genotype[f'{cell}_concat']}):")
        for index, pair in enumerate(nodes, start=2):
            lines.append(f"    node {index} = " + " + ".join(f"{op}(input {source})" for op, source in pair))
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class Stack:
    """`darts-service up` in its own process group (Ctrl-C of the demo reaches it through `stop`)."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.key_path = data_dir / ADMIN_KEY_FILE
        self.log_path = data_dir / "stack.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "up", "--port", str(port), "--data-dir", str(data_dir)],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                # `up` gets SIGINT (a clean stop) if the demo dies without stopping it (Linux).
                preexec_fn=die_with_parent(signal.SIGINT),
            )

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"darts-service up exited with {code}; see {self.log_path}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"the stack was not ready within {timeout} s; see {self.log_path}")

    def client(self, timeout: float = 30.0) -> httpx.Client:
        """An HTTP client of the stack's API, authenticated with its admin key (close it, or use ``with``)."""
        return httpx.Client(
            base_url=self.url, timeout=timeout, headers={"Authorization": f"Bearer {self.key()}"}
        )

    def key(self) -> str:
        """The admin key `up` wrote before its API answered (a client like any other uses it)."""
        return self.key_path.read_text().strip()

    def stop(self, timeout: float = 90.0) -> None:
        if self.process.poll() is not None:
            return
        # A second Ctrl-C or SIGTERM must not cut the clean stop short.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def run_demo(data_dir: Path, port: int, epochs: int) -> int:
    # One intra-op thread per worker unless the caller says otherwise: on a small machine shared with
    # other work, torch's default (a thread per core) spins on contended cores and can run many times
    # slower; on an idle 2-core machine one thread costs little.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spec = json.loads(json.dumps(DEMO_SPEC))
    spec["training"]["epochs"] = epochs
    print(f"starting darts-service up on {port} (data in {data_dir}, log in {data_dir / 'stack.log'}) ...")
    stack = Stack(data_dir, port)
    try:
        stack.wait_ready()
        with stack.client() as client:
            created = client.post("/searches", json=spec)
            if created.status_code != 201:
                print(f"POST /searches answered {created.status_code}: {created.text}", file=sys.stderr)
                return 1
            search = created.json()
            search_id = search["id"]
            print(f"search {search_id} submitted on digits: {epochs} epochs; status {search['status']}")
            for event, data in _sse_events(client, f"/searches/{search_id}/events"):
                if event == "epoch":
                    print(_format_epoch(data, epochs), flush=True)
                elif event == "status":
                    print(f"status: {data['status']}" + (f" ({data['error']})" if data.get("error") else ""))
            final = client.get(f"/searches/{search_id}").json()
            if final["status"] != "succeeded":
                print(f"search ended {final['status']}: {final['error']}", file=sys.stderr)
                return 1
            genotype = client.get(f"/searches/{search_id}/genotype").json()
            seconds = (_parse(final["finished_at"]) - _parse(final["created_at"])).total_seconds()
            print(f"\nbest valid accuracy {final['best_valid_acc']:.3f}; {seconds:.0f} s from POST to end")
            print("genotype found:")
            print(_format_genotype(genotype))
            print(json.dumps(genotype))
            return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        print("stopping the stack ...")
        stack.stop()


def _parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m app.stack.demo", description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(".darts/demo"), help="stack data directory")
    parser.add_argument("--port", type=int, default=0, help="API port (default: a free one)")
    parser.add_argument("--epochs", type=int, default=DEMO_SPEC["training"]["epochs"], help="search epochs")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` or a CI timeout stops the stack too
    return run_demo(args.data_dir.resolve(), args.port or _free_port(), args.epochs)


if __name__ == "__main__":
    sys.exit(main())
