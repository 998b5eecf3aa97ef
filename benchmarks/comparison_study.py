"""A comparison study through the whole service: every search method against random search on digits.

`make comparison-study`. Starts `darts-service up` (embedded SQLite and Redis, one worker) under
``--data-dir``, posts one study: every method of ``--methods`` (default: every method the spec knows)
with every seed of ``--seeds``, and ``--random-baseline`` genotypes drawn at random, all selected by the
same short training; then follows it to its end and prints its ``comparison`` table (Markdown) with
the machine. The searches use the demo's supernet (5 cells, 8 channels, batch 32, first order). With
the defaults (9 methods, 2 seeds, 4 random genotypes) it runs 18 searches and 22 selection trainings
one after another: about an hour on two CPU cores. Exits 1 unless the study succeeds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any

from app.stack.demo import Stack, _free_port, _interrupt
from darts_core.spec.method_spec import METHOD_NAMES


def study_body(
    methods: list[str], seeds: list[int], random_baseline: int, epochs: int, selection_epochs: int
) -> dict[str, Any]:
    """The `POST /studies` body (digits, the demo's supernet, a selection of `selection_epochs`)."""
    return {
        "name": "comparison on digits",
        "search": {
            "dataset": {"name": "digits"},
            "network": {"cells": 5, "init_channels": 8, "stem_multiplier": 3},
            "training": {"epochs": epochs, "batch_size": 32, "order": "first"},
        },
        "seeds": seeds,
        "methods": [{"name": name} for name in methods],
        "random_baseline": random_baseline,
        "selection": {
            "network": {"cells": 5, "init_channels": 16},
            "training": {"epochs": selection_epochs, "valid_fraction": 0.2},
        },
    }


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f} %"


def markdown_table(comparison: list[dict[str, Any]]) -> str:
    lines = [
        "| method | runs | valid acc mean ± std | best | test acc | parameters | multiply-adds | search s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in comparison:
        std = row["valid_acc_std"]
        spread = _percent(row["valid_acc_mean"]) + ("" if std is None else f" ± {100 * std:.1f}")
        size = "-" if row["parameters_mean"] is None else f"{row['parameters_mean']:,.0f}"
        adds = "-" if row["multiply_adds_mean"] is None else f"{row['multiply_adds_mean']:,.0f}"
        seconds = "-" if row["search_seconds_mean"] is None else f"{row['search_seconds_mean']:.0f}"
        label = row["method"] + (" (chosen)" if row["chosen"] else "")
        lines.append(
            f"| {label} | {row['succeeded']}/{row['runs']} | {spread} | {_percent(row['best_valid_acc'])} "
            f"| {_percent(row['test_accuracy_mean'])} | {size} | {adds} | {seconds} |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    searches = len(args.methods) * len(args.seeds)
    os.environ["MAX_ACTIVE_SEARCHES_PER_OWNER"] = str(max(8, searches))  # the whole study at once
    body = study_body(args.methods, args.seeds, args.random_baseline, args.epochs, args.selection_epochs)
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
        f"{searches} searches of {args.epochs} epochs, {searches + args.random_baseline} selection "
        f"trainings of {args.selection_epochs} epochs",
        flush=True,
    )
    stack = Stack(args.data_dir.resolve(), args.port or _free_port())
    started = time.monotonic()
    try:
        stack.wait_ready()
        with stack.client() as client:
            created = client.post("/studies", json=body)
            if created.status_code != 201:
                print(f"POST /studies answered {created.status_code}: {created.text}", file=sys.stderr)
                return 1
            study_id = created.json()["id"]
            print(f"study {study_id} submitted", flush=True)
            last = ""
            while True:
                study = client.get(f"/studies/{study_id}").json()
                done = sum(
                    child["status"] in ("succeeded", "failed", "cancelled")
                    for stage in ("search", "selection")
                    for child in study["stages"][stage]
                )
                line = f"{study['status']}, stage {study['stage']}, {done} children finished"
                if line != last:
                    print(f"{time.monotonic() - started:7.0f} s  {line}", flush=True)
                    last = line
                if study["status"] in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(10)
        print(
            f"\nstudy {study['status']} after {time.monotonic() - started:.0f} s"
            + (f": {study['error']}" if study.get("error") else "")
        )
        print(f"load average at the end {os.getloadavg()[0]:.1f}\n")
        print(markdown_table(study["comparison"]))
        if args.json is not None:
            args.json.write_text(json.dumps(study, indent=2))
        return 0 if study["status"] == "succeeded" else 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        stack.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/comparison_study.py", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--random-baseline", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6, help="search epochs (default 6)")
    parser.add_argument("--selection-epochs", type=int, default=8, help="selection epochs (default 8)")
    parser.add_argument("--data-dir", type=Path, default=Path(".darts/comparison"))
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="also write the study (GET /studies/{id})")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
