"""May bf16 drive the architecture step? Genotype and alpha agreement of bf16 and fp32 searches (issue 22).

For each seed, tiny first-order searches on the same data run three ways:

* ``fp32``: every forward in fp32 (the reference of the comparison);
* ``bf16-weights``: the weight step under bf16 autocast, the architecture step in exact fp32
  (``DartsSearch(autocast_dtype=bf16)``, what ``resources.precision=auto`` does on CUDA);
* ``bf16-all``: the architecture step under bf16 autocast too (``arch_autocast=True``).

and a fourth, ``fp32-jitter``, is the fp32 search with every initial weight moved by one part in 1e5:
how far two fp32 searches drift apart from rounding-sized differences alone (the floor against which the
bf16 figures are read). Per variant: the share of the final genotype's edges (op and input) equal to the
fp32 search's, and the largest difference of the final softmaxed alphas from it.

    .venv/bin/python benchmarks/precision.py                       # digits, 3 seeds (CPU: ~10 min)
    .venv/bin/python benchmarks/precision.py --seeds 0 --epochs 1  # a smoke run
    .venv/bin/python benchmarks/precision.py --device cuda --json precision.json

CPU autocast is used on CPU: its bf16 rounding is the same format as CUDA's, its kernels differ.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from typing import Any

import torch

from darts_core.data.registry import load_dataset
from darts_core.search import loop
from darts_core.search.bilevel import DartsSearch
from darts_core.spec.genotype import Genotype
from darts_core.spec.search_spec import SearchConfig

VARIANTS = ("fp32", "bf16-weights", "bf16-all", "fp32-jitter")


def _edges(genotype: Genotype) -> list[tuple[str, int]]:
    data = genotype.to_json()
    return [tuple(edge) for kind in ("normal", "reduce") for edge in data[kind]]  # type: ignore[misc]


def _search(dataset: Any, spec: dict[str, Any], variant: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    precision = "fp32" if variant.startswith("fp32") else "bf16"
    config = SearchConfig.from_spec({**spec, "resources": {**spec["resources"], "precision": precision}})
    original = loop.DartsSearch
    search_class: Any = functools.partial(DartsSearch, arch_autocast=variant == "bf16-all")
    build = loop._build_network

    def jittered(*args: Any, **kwargs: Any) -> Any:
        network = build(*args, **kwargs)
        generator = torch.Generator().manual_seed(12345)
        with torch.no_grad():
            for parameter in network.weight_parameters():
                noise = torch.randn(parameter.shape, generator=generator).to(parameter.device)
                parameter.mul_(1 + 1e-5 * noise)
        return network

    loop.DartsSearch = search_class  # type: ignore[misc]
    if variant == "fp32-jitter":
        loop._build_network = jittered  # type: ignore[assignment]
    try:
        result = loop.run_search(dataset, config)
    finally:
        loop.DartsSearch = original  # type: ignore[misc]
        loop._build_network = build  # type: ignore[assignment]
    return _edges(result.genotype), result.history[-1].alphas


def _alpha_difference(a: dict[str, Any], b: dict[str, Any]) -> float:
    return max(
        abs(x - y)
        for kind in ("normal", "reduce")
        for row_a, row_b in zip(a[kind], b[kind], strict=True)
        for x, y in zip(row_a, row_b, strict=True)
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--cells", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    dataset = load_dataset({"name": "digits"})
    rows = []
    for seed in args.seeds:
        spec = {
            "network": {"init_channels": args.channels, "cells": args.cells},
            "training": {"epochs": args.epochs, "batch_size": 64, "seed": seed, "order": "first"},
            "resources": {"device": args.device},
        }
        started = time.perf_counter()
        reference_edges, reference_alphas = _search(dataset, spec, "fp32")
        for variant in VARIANTS[1:]:
            edges, alphas = _search(dataset, spec, variant)
            same = sum(a == b for a, b in zip(edges, reference_edges, strict=True)) / len(edges)
            row = {
                "seed": seed,
                "variant": variant,
                "genotype_agreement": same,
                "alpha_max_abs_difference": _alpha_difference(alphas, reference_alphas),
                # how far the fp32 search moved its softmaxed alphas from uniform: the scale of the above
                "fp32_alpha_movement": max(
                    abs(x - 1 / len(row))
                    for kind in ("normal", "reduce")
                    for row in reference_alphas[kind]
                    for x in row
                ),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
        print(f"# seed {seed}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    print("| variant | genotype edges equal to fp32 (mean) | max softmaxed-alpha difference (mean) |")
    print("| --- | --- | --- |")
    for variant in VARIANTS[1:]:
        chosen = [row for row in rows if row["variant"] == variant]
        agreement = sum(row["genotype_agreement"] for row in chosen) / len(chosen)
        difference = sum(row["alpha_max_abs_difference"] for row in chosen) / len(chosen)
        print(f"| {variant} | {agreement:.0%} | {difference:.2e} |")
    if args.json:
        with open(args.json, "w") as file:
            json.dump(rows, file, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
