"""`/healthz` latency while the API validates the worst bodies it accepts.

Needs a running API (`darts-service up`). Sends, all at once, `--uploads` uploads of the worst `.npz`
the default limits let through (float32 zeros, exactly MAX_DATASET_VALUES values: about 1 MB on the
wire, 1 GiB inflated, every value read and checked) and `--bodies` JSON bodies of MAX_BODY_BYTES, and
asks `/healthz` every 20 ms until they have all been answered. Prints the machine, the latencies of
`/healthz` (median, p90, max) and of the bodies. Never run as a timed test.

    darts-service up --data-dir /tmp/healthz &
    python benchmarks/healthz_under_load.py --url http://127.0.0.1:8000
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from conftest import write_npz_of_zeros  # noqa: E402  (the suite's zip-of-zeros writer)


def worst_upload(values: int) -> bytes:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "worst.npz"
        samples = values // (3 * 32 * 32)
        write_npz_of_zeros(path, (samples, 3, 32, 32), dtype="float32")
        return path.read_bytes()


def worst_body(size: int) -> bytes:
    """A spec as large as MAX_BODY_BYTES allows: a long list of primitives (refused, after parsing)."""
    names = b'"none",' * ((size - 200) // 7)
    return b'{"dataset": {"name": "digits"}, "search_space": {"primitives": [' + names[:-1] + b"]}}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--key", default=os.environ.get("DARTS_KEY"), help="API key (Bearer), if needed")
    parser.add_argument("--uploads", type=int, default=4)
    parser.add_argument("--bodies", type=int, default=4)
    parser.add_argument("--values", type=int, default=2**28, help="MAX_DATASET_VALUES of the API")
    parser.add_argument("--body-bytes", type=int, default=2**20, help="MAX_BODY_BYTES of the API")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.key}"} if args.key else {}
    upload, body = worst_upload(args.values), worst_body(args.body_bytes)
    done = threading.Event()
    answers: list[tuple[str, int, float]] = []

    def send(kind: str) -> None:
        with httpx.Client(base_url=args.url, headers=headers, timeout=600) as http:
            started = time.perf_counter()
            if kind == "upload":
                response = http.post(
                    "/datasets", params={"filename": "worst.npz"}, content=upload,
                    headers={"content-type": "application/octet-stream"},
                )
            else:
                response = http.post("/searches", content=body, headers={"content-type": "application/json"})
            answers.append((kind, response.status_code, time.perf_counter() - started))

    threads = [threading.Thread(target=send, args=("upload",)) for _ in range(args.uploads)]
    threads += [threading.Thread(target=send, args=("body",)) for _ in range(args.bodies)]
    latencies = []
    with httpx.Client(base_url=args.url, headers=headers, timeout=600) as http:
        http.get("/healthz")
        for thread in threads:
            thread.start()
        threading.Thread(target=lambda: [t.join() for t in threads] and None or done.set()).start()
        while not done.is_set():
            started = time.perf_counter()
            http.get("/healthz").raise_for_status()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)
    print(f"{datetime.now().isoformat(timespec='seconds')} {platform.node()} {platform.processor()} "
          f"{os.cpu_count()} CPUs, python {platform.python_version()}")
    print(f"upload {len(upload)} bytes ({args.values} float32 values inflated), body {len(body)} bytes")
    for kind, status, seconds in sorted(answers):
        print(f"  {kind:6s} -> {status} in {seconds:.2f} s")
    ms = sorted(1000 * value for value in latencies)
    print(
        f"/healthz while they ran: {len(ms)} requests, median {statistics.median(ms):.1f} ms, "
        f"p90 {ms[int(0.9 * (len(ms) - 1))]:.1f} ms, max {ms[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
