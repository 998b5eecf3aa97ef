"""The one-shot device check (issue 22), run by benchmarks/gpu_check.sh: writes report.json to OUT.

Parts (each records what it measured, or why it could not): the second-order alpha-gradient error of
bf16 / fp32 / TF32 on the device against CPU fp32; CPU-vs-device parity of a tiny first- and second-order
search (softmaxed alphas, genotype); step time and peak memory of DARTS first and second order and
PC-DARTS (K=4), fp32 and bf16, each without and with `torch.compile` of the weight step's forward
(`resources.compile`; `COMPILED` says which cases, at the tiny size only DARTS first order fp32:
compilation takes up to a minute per case). Without CUDA it says so and measures what CPU allows.
Not covered yet: the CIFAR-shaped epoch against the admission estimate, the DARTS_V2 epoch.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch

from darts_core.data.registry import load_dataset
from darts_core.nn.search_network import SearchNetwork
from darts_core.search.bilevel import DartsSearch
from darts_core.search.loop import SearchConfig, run_search

TINY = os.environ.get("GPU_CHECK_TINY") == "1"
CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
# The step-cost cases measured with torch.compile too (each compiles for up to a minute: the check must
# end within its 10 minutes).
COMPILED = {("darts-1st", "fp32"), ("darts-1st", "bf16"), ("pc-darts", "bf16")}
COMPILED_TINY = {("darts-1st", "fp32")}


def _batches(batch: int, size: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(batch, 3, size, size, generator=generator).to(device),
            torch.randint(0, 10, (batch,), generator=generator).to(device),
        )
        for _ in range(2)
    ]


def _network(cells: int, channels: int, partial: int, device: torch.device) -> SearchNetwork:
    torch.manual_seed(0)
    return SearchNetwork(3, 10, init_channels=channels, cells=cells, partial_channels=partial).to(device)


def gradient_error() -> dict[str, Any]:
    cells, channels, size, batch = (2, 4, 8, 4) if TINY else (5, 8, 16, 16)

    def grads(device: torch.device, dtype: torch.dtype | None, tf32: bool) -> list[torch.Tensor]:
        conv: Any = torch.backends.cudnn.conv  # type: ignore[attr-defined]
        conv.fp32_precision = "tf32" if tf32 else "ieee"
        torch.backends.cuda.matmul.fp32_precision = "tf32" if tf32 else "ieee"
        search = DartsSearch(_network(cells, channels, 1, device), order="second", autocast_dtype=dtype)
        train, valid = _batches(batch, size, device)
        return [g.cpu() for g in search.arch_gradients(train, valid)]

    reference = grads(torch.device("cpu"), None, False)
    scale = max(float(g.abs().max()) for g in reference)
    result: dict[str, Any] = {"case": f"{cells} cells, {channels} channels, {size}x{size}, batch {batch}"}
    for name, dtype, tf32 in (("fp32", None, False), ("tf32", None, True), ("bf16", torch.bfloat16, False)):
        got = grads(DEVICE, dtype, tf32)
        result[name] = max(float((a - b).abs().max()) for a, b in zip(reference, got, strict=True)) / scale
    result["device"] = str(DEVICE)
    return result


def parity() -> dict[str, Any]:
    if not CUDA:
        return {"skipped": "no CUDA: nothing to compare the CPU search with"}
    dataset = load_dataset({"name": "synthetic", "num_samples": 128, "image_size": 8, "num_classes": 4})
    out: dict[str, Any] = {}
    for order in ("first", "second"):
        runs = {}
        for device in ("cpu", "cuda"):
            spec = {
                "network": {"cells": 3, "init_channels": 4},
                "training": {"epochs": 2, "batch_size": 16, "order": order},
                "resources": {"device": device, "precision": "fp32"},
            }
            runs[device] = run_search(dataset, SearchConfig.from_spec(spec)).history[-1].to_dict()
        alphas = max(
            abs(a - b)
            for kind in ("normal", "reduce")
            for ra, rb in zip(runs["cpu"]["alphas"][kind], runs["cuda"]["alphas"][kind], strict=True)
            for a, b in zip(ra, rb, strict=True)
        )
        out[order] = {
            "alpha_max_abs_difference": alphas,
            "alpha_tolerance": 1e-4,
            "same_genotype": runs["cpu"]["genotype"] == runs["cuda"]["genotype"],
            "valid_loss": [runs["cpu"]["valid_loss"], runs["cuda"]["valid_loss"]],
        }
    return out


def step_costs() -> list[dict[str, Any]]:
    cells, channels, size, batch, repeats = (2, 4, 8, 4, 1) if TINY else (8, 16, 32, 64, 5)
    rows = []
    dtypes = (("fp32", None), ("bf16", torch.bfloat16)) if CUDA or TINY else (("fp32", None),)
    for name, order, partial in (
        ("darts-1st", "first", 1),
        ("darts-2nd", "second", 1),
        ("pc-darts", "first", 4),
    ):
        for dtype_name, dtype in dtypes:
            for compiled in (False, True):
                if compiled and (name, dtype_name) not in (COMPILED_TINY if TINY else COMPILED):
                    continue
                row: dict[str, Any] = {"case": name, "dtype": dtype_name, "compile": compiled, "batch": batch}
                try:
                    cost = _step_cost(cells, channels, partial, order, dtype, compiled, size, batch, repeats)
                    row.update(cost)
                except Exception as exc:  # noqa: BLE001 - e.g. torch.compile without a compiler: say so
                    row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                rows.append(row)
    return rows


def _step_cost(
    cells: int,
    channels: int,
    partial: int,
    order: str,
    dtype: torch.dtype | None,
    compiled: bool,
    size: int,
    batch: int,
    repeats: int,
) -> dict[str, Any]:
    search = DartsSearch(
        _network(cells, channels, partial, DEVICE), order=order, autocast_dtype=dtype, compile=compiled
    )
    train, valid = _batches(batch, size, DEVICE)
    started = time.perf_counter()
    search.step(train, valid)  # warm-up (and the compilation)
    if CUDA:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    first = time.perf_counter() - started
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        search.step(train, valid)
        if CUDA:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return {
        "first_step_s": first,
        "ms_per_step": 1000 * sorted(times)[len(times) // 2],
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if CUDA else None,
    }


def main() -> int:
    out = sys.argv[1]
    report: dict[str, Any] = {
        "cuda": CUDA,
        "tiny": TINY,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if CUDA else "no CUDA: CPU only",
    }
    for name, part in (
        ("second_order_gradient_error", gradient_error),
        ("parity", parity),
        ("step_costs", step_costs),
    ):
        started = time.perf_counter()
        try:
            report[name] = part()
        except Exception as exc:  # noqa: BLE001 - the report says what failed, the other parts still run
            report[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
    with open(os.path.join(out, "report.json"), "w") as file:
        json.dump(report, file, indent=1)
    print(json.dumps(report, indent=1))
    return 0 if not any(isinstance(v, dict) and "error" in v for v in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
