"""Every search method on digits: supernet valid accuracy, then its genotype retrained.

`make methods-digits`.

Each method of ``--methods`` (default: every method the spec knows) searches the demo's supernet on
scikit-learn's digits (:data:`darts_core.cli.demo.DEMO_SEARCH_SPEC`: 5 cells, 8 channels, batch 32,
first order, seed 0) with its paper's default hyperparameters, then its genotype is retrained from
scratch on the same split and tested on the 359 held-out images. The bilevel methods search 10 epochs;
GDAS and random_ws, whose shared weights train under one sampled architecture a batch, search 150
(:data:`SEARCH_EPOCHS`: their steps cost 0.16x and 0.06x a DARTS step's CPU time, and on digits their
supernets pass 0.90 only after 80 to 90 epochs). The bars are those of
``make pcdarts-digits``: supernet valid accuracy >= 0.90 and retrained test accuracy >= 0.95 (exit 1
when a method misses either). Prints a Markdown table with the machine, and writes it as JSON with
``--json``. Outside ``make test``: about a minute to several per method on two CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from darts_core.cli.demo import DEMO_SEARCH_SPEC
from darts_core.data.registry import load_dataset
from darts_core.search.loop import SearchConfig, run_search
from darts_core.spec.method_spec import METHOD_NAMES
from darts_core.train.train_genotype import train_genotype

#: Search epochs of the methods that need other than :data:`DEFAULT_SEARCH_EPOCHS`.
SEARCH_EPOCHS = {"gdas": 150, "random_ws": 150}
DEFAULT_SEARCH_EPOCHS = 10


def _method_epochs(text: str) -> tuple[str, int]:
    name, _, epochs = text.partition("=")
    if name not in METHOD_NAMES or not epochs.isdigit() or int(epochs) < 1:
        raise argparse.ArgumentTypeError(
            f"expected METHOD=EPOCHS with METHOD among {list(METHOD_NAMES)}, got {text!r}"
        )
    return name, int(epochs)


def run_method(name: str, epochs: int, train_epochs: int, dataset: Any) -> dict[str, Any]:
    """One method's search and retraining: the figures of its table row."""
    spec = json.loads(json.dumps(DEMO_SEARCH_SPEC))
    spec["training"]["epochs"] = epochs
    spec["method"] = {"name": name}
    config = SearchConfig.from_spec(spec)
    started = time.perf_counter()
    result = run_search(
        dataset,
        config,
        on_epoch=lambda r: print(
            f"  {name} epoch {r.epoch}/{epochs}: valid acc {r.valid_acc:.3f}", flush=True
        ),
    )
    search_seconds = time.perf_counter() - started
    trained = train_genotype(result.genotype, dataset, epochs=train_epochs, device="cpu")
    history = result.history
    return {
        "method": name,
        "epochs": epochs,
        "valid_acc": history[-1].valid_acc,
        "best_valid_acc": max(item.valid_acc for item in history),
        "test_acc": trained.test_accuracy,
        "parameters": trained.parameters,
        "search_seconds": round(search_seconds, 1),
        "train_seconds": round(trained.seconds, 1),
        "skip_connections": history[-1].skip_connections,
        "genotype": result.genotype.to_darts(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks/methods_digits.py", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=METHOD_NAMES)
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help=f"search epochs of every method (default: {DEFAULT_SEARCH_EPOCHS}; "
        + ", ".join(f"{name} {epochs}" for name, epochs in SEARCH_EPOCHS.items())
        + ")",
    )
    parser.add_argument(
        "--method-epochs",
        type=_method_epochs,
        nargs="+",
        default=[],
        metavar="METHOD=EPOCHS",
        help="search epochs of one method, over --epochs (e.g. gdas=200)",
    )
    parser.add_argument("--train-epochs", type=int, default=20, help="retraining epochs (default 20)")
    parser.add_argument("--min-valid-acc", type=float, default=0.90)
    parser.add_argument("--min-test-acc", type=float, default=0.95)
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dataset = load_dataset({"name": "digits"})
    print(
        f"machine: {platform.node()}, {os.cpu_count()} cores, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, 1 thread, load average {os.getloadavg()[0]:.1f}; "
        f"{args.train_epochs} retraining epochs",
        flush=True,
    )
    overrides = dict(args.method_epochs)
    if unused := sorted(set(overrides) - set(args.methods)):
        parser.error(f"--method-epochs: {', '.join(unused)} not among --methods")
    rows = []
    for name in args.methods:
        default = SEARCH_EPOCHS.get(name, DEFAULT_SEARCH_EPOCHS) if args.epochs is None else args.epochs
        rows.append(run_method(name, overrides.get(name, default), args.train_epochs, dataset))
        row = rows[-1]
        print(
            f"{name}: supernet valid acc {row['valid_acc']:.4f}, retrained test acc {row['test_acc']:.4f}",
            flush=True,
        )
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print(
        "| method | search epochs | supernet valid acc (best) | retrained test acc | parameters "
        "| search s | retrain s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['method']} | {row['epochs']} | {row['valid_acc']:.4f} ({row['best_valid_acc']:.4f}) "
            f"| {row['test_acc']:.4f} "
            f"| {row['parameters']:,} | {row['search_seconds']:.0f} | {row['train_seconds']:.0f} |"
        )
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2))
    missed = [
        row["method"]
        for row in rows
        if row["valid_acc"] < args.min_valid_acc or row["test_acc"] < args.min_test_acc
    ]
    if missed:
        print(
            f"below the bars ({args.min_valid_acc}, {args.min_test_acc}): {', '.join(missed)}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
