"""A parameter budget on digits: the unconstrained search, then the same search with a budget at
``--fraction`` of the unconstrained genotype's parameters for each ``--weights`` penalty weight; every
genotype retrained with the training spec's defaults (the network the budget is counted on).

Prints, per run: the genotype's parameters and multiply-adds (exact, as the training reports them), the
expected parameters under the last epoch's alphas (what the penalty sees), whether the genotype fits,
and the retrained test accuracy. A benchmark with figures, not a test.

    python benchmarks/budget_digits.py --epochs 6 --train-epochs 12 --fraction 0.6 --weights 0 1 10
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from darts_core.data.registry import load_dataset
from darts_core.search.budget import Budget, cost_table_for
from darts_core.search.loop import run_search
from darts_core.spec.search_spec import SearchConfig
from darts_core.spec.training_spec import TrainingJobConfig
from darts_core.train.job import run_training_job


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-epochs", type=int, default=12)
    parser.add_argument("--fraction", type=float, default=0.6)
    parser.add_argument("--weights", type=float, nargs="+", default=[0.0, 1.0, 10.0])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    machine = f"{platform.node()}, {os.cpu_count()} cores, torch {torch.__version__}"
    print(f"machine: {machine}, {args.threads} threads")
    dataset = load_dataset({"name": "digits"})
    base = {
        "network": {"cells": 5, "init_channels": 8},
        "training": {"epochs": args.epochs, "batch_size": 32, "seed": 0},
        "resources": {"device": "cpu"},
    }
    training = TrainingJobConfig.from_spec(
        {"training": {"epochs": args.train_epochs}, "resources": {"device": "cpu"}}
    )
    table = cost_table_for(SearchConfig.from_spec(base), (1, 8, 8), 10)
    cheapest = table.cost(table.cheapest())

    def run(label: str, spec: dict) -> tuple[float, float]:
        started = time.perf_counter()
        config = SearchConfig.from_spec(spec)
        result = run_search(dataset, config)
        parameters, multiply_adds = table.cost(result.genotype)
        last = result.history[-1]
        expected = last.cost["expected_parameters"] if last.cost else None
        fits = "-" if not config.constraints.active else (
            "fits" if Budget.of(config.constraints).fits((parameters, multiply_adds)) else "OVER"
        )
        trained = run_training_job(result.genotype, training, dataset)
        print(
            f"{label:<28} parameters {round(parameters):>8,}  multiply-adds {round(multiply_adds):>10,}  "
            f"expected parameters {'-' if expected is None else f'{expected:,.0f}':>9}  {fits:>4}  "
            f"retrained test acc {trained.test_accuracy:.4f}  ({time.perf_counter() - started:.0f} s)",
            flush=True,
        )
        return parameters, multiply_adds

    print(f"cheapest genotype: {round(cheapest[0]):,} parameters, {round(cheapest[1]):,} multiply-adds")
    unconstrained, _ = run("unconstrained", base)
    limit = max(int(args.fraction * unconstrained), round(cheapest[0]))
    print(f"budget: max_parameters {limit:,} ({limit / unconstrained:.0%} of the unconstrained genotype's)")
    for weight in args.weights:
        spec = {**base, "constraints": {"max_parameters": limit, "penalty_weight": weight}}
        run(f"budget, penalty_weight {weight:g}", spec)


if __name__ == "__main__":
    main()
