"""Speed and memory of one DARTS bilevel search step: darts_core against the DARTS and PC-DARTS references.

The baselines compute a step the way the reference codes do: ``benchmarks/reference.py`` (DARTS) and
``benchmarks/pcdarts_reference.py`` (PC-DARTS: ``K = --partial-channels`` and edge normalization). Every
implementation starts from the same initial network and sees the same batches. Configuration (the DARTS
CIFAR-10 search): 32x32x3 input, 10 classes, 16 initial channels, 8 cells, 4 nodes per cell.

Implementations: ``reference`` and ``darts_core`` (DARTS), ``darts_core_cl`` (darts_core with channels_last
applied from the outside), ``pcdarts_reference`` and ``pcdarts_core`` (darts_core with
``partial_channels=K, edge_normalization=True``). ``pcdarts_core`` is compared with both references.

Figures per (order, batch size, dtype) and implementation:

- ``ms/step``: median (and minimum) wall time of one bilevel step (architecture step + weight step)
  over ``--repeats`` steps after ``--warmup`` steps;
- ``saved MB``: bytes of activations saved for backward by one forward/backward of the training loss
  (unique tensor storages seen by ``torch.autograd.graph.saved_tensors_hooks``, parameters and buffers
  excluded): deterministic, independent of machine load;
- ``step saved MB``: the largest amount of such saved activations alive at once during a whole bilevel
  step (counts every pass of the implementation's own step: the first-order architecture pass without
  weight gradients, the extra passes of the second order);
- ``peak RSS MB`` (CPU): the process's peak resident memory during the steps minus its resident memory
  before them, each case in a fresh subprocess;
- on CUDA: images per second (training-split images; every step also reads as many validation images),
  peak GPU memory (``torch.cuda.max_memory_allocated``), and the time of one search epoch of the
  reference configuration (25,000 + 25,000 images, batch 64) extrapolated from the median step.

Run ``python benchmarks/search_step.py --help``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from benchmarks import pcdarts_reference, reference  # noqa: E402
from darts_core.estimate import SavedTensorMeter  # noqa: E402  (one definition, shared with admission)
from darts_core.nn.ops import DARTS_PRIMITIVES_2D  # noqa: E402
from darts_core.nn.search_network import SearchNetwork  # noqa: E402
from darts_core.search.loop import DartsSearch  # noqa: E402
from darts_core.search.methods import (  # noqa: E402
    BetaDarts,
    DartsMinus,
    Drnas,
    FairDarts,
    Gdas,
    RandomWs,
    Sdarts,
    SearchMethod,
)

#: ``darts_core_cl``: darts_core with the network and the images in channels_last memory format (a
#: proposal measured from the outside: nothing in darts_core changes).
#: ``gdas_core``: darts_core with the GDAS method (one sampled operation per edge, first order only).
#: ``drnas_core``: darts_core with DrNAS (Dirichlet-sampled mixing, L2 anchor; first order only).
#: ``darts_minus_core``: darts_core with DARTS- (the auxiliary skip on every edge, beta = 1).
#: ``random_ws_core``: darts_core with random search with weight sharing (the weight step alone, on one
#: drawn architecture: two inputs per node, one operation each).
#: ``fair_darts_core``: darts_core with FairDARTS (sigmoid weights, the zero-one loss, first order only).
#: ``beta_darts_core``: darts_core with beta-DARTS (the Beta regularizer at lambda 50, its largest).
#: ``sdarts_rs_core``, ``sdarts_adv_core``: darts_core with SDARTS (eps 0.3, its largest; ADV: the 7-step
#: attack), first order only.
IMPLEMENTATIONS = (
    "reference",
    "darts_core",
    "darts_core_cl",
    "pcdarts_reference",
    "pcdarts_core",
    "gdas_core",
    "drnas_core",
    "darts_minus_core",
    "random_ws_core",
    "fair_darts_core",
    "beta_darts_core",
    "sdarts_rs_core",
    "sdarts_adv_core",
)
#: Which baselines each darts_core variant is compared with, in the table.
_BASELINES = {
    "darts_core": ("reference",),
    "darts_core_cl": ("reference",),
    "pcdarts_core": ("pcdarts_reference", "reference"),
    "gdas_core": ("darts_core", "reference"),
    "drnas_core": ("darts_core", "reference"),
    "darts_minus_core": ("darts_core", "reference"),
    "random_ws_core": ("darts_core", "reference"),
    "fair_darts_core": ("darts_core", "reference"),
    "beta_darts_core": ("darts_core", "reference"),
    "sdarts_rs_core": ("darts_core", "reference"),
    "sdarts_adv_core": ("darts_core", "reference"),
}
#: The search method of each darts_core implementation (DARTS for the others).
_METHODS: dict[str, Callable[[], SearchMethod]] = {
    "gdas_core": Gdas,
    "drnas_core": Drnas,
    "darts_minus_core": lambda: DartsMinus(list(DARTS_PRIMITIVES_2D).index("skip_connect")),
    "random_ws_core": RandomWs,
    "fair_darts_core": FairDarts,
    "beta_darts_core": lambda: BetaDarts(lambda_start=50.0, lambda_end=50.0),
    "sdarts_rs_core": lambda: Sdarts(0.3, 0.3),
    "sdarts_adv_core": lambda: Sdarts(0.3, 0.3, attack_steps=7),
}
#: The methods without a second-order step.
_FIRST_ORDER_ONLY = (
    "gdas_core", "drnas_core", "random_ws_core", "fair_darts_core", "sdarts_rs_core", "sdarts_adv_core"
)
IN_CHANNELS, NUM_CLASSES, IMAGE_SIZE = 3, 10, 32
EPOCH_IMAGES = 25_000  # the reference search splits CIFAR-10's 50,000 training images in two halves
_CASE_MARKER = "CASE-RESULT "
_MB = 2**20


# --------------------------------------------------------------------------- one case


def _machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(value, 2) for value in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _current_rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _batch(generator: torch.Generator, batch_size: int, device: torch.device) -> reference.Batch:
    images = torch.randn(batch_size, IN_CHANNELS, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (batch_size,), generator=generator)
    return images.to(device), labels.to(device)


def _autocast(device: torch.device, dtype: str) -> contextlib.AbstractContextManager:
    if dtype == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _build(case: dict[str, Any], device: torch.device) -> tuple[Callable, torch.nn.Module]:
    """The step function ``step(train_batch, valid_batch)`` and the network it trains.

    Both implementations start from the same initial state: the darts_core network built with
    ``case["seed"]``, copied into the reference network for the baseline.
    """
    torch.manual_seed(case["seed"])
    pcdarts = case["impl"].startswith("pcdarts")
    k = case.get("partial_channels", 4) if pcdarts else 1
    network = SearchNetwork(
        IN_CHANNELS,
        NUM_CLASSES,
        init_channels=case["channels"],
        cells=case["cells"],
        internal_nodes=4,
        partial_channels=k,
        edge_normalization=pcdarts,
    ).to(device)
    if case["impl"] in ("darts_core", "darts_core_cl", "pcdarts_core", *_METHODS):
        autocast_dtype = torch.bfloat16 if case["dtype"] == "bf16" else None
        if case["impl"] == "darts_core_cl":
            network = network.to(memory_format=torch.channels_last)
        method = _METHODS[case["impl"]]() if case["impl"] in _METHODS else None
        search = DartsSearch(network, order=case["order"], autocast_dtype=autocast_dtype, method=method)
        return search.step, network

    if pcdarts:
        baseline: torch.nn.Module = pcdarts_reference.PCDartsReferenceNetwork(
            IN_CHANNELS,
            NUM_CLASSES,
            init_channels=case["channels"],
            cells=case["cells"],
            steps=4,
            k=k,
            device=device,
        )
    else:
        baseline = reference.ReferenceNetwork(
            IN_CHANNELS,
            NUM_CLASSES,
            init_channels=case["channels"],
            cells=case["cells"],
            steps=4,
            device=device,
        )
    reference.load_from_search_network(baseline, network)
    reference_search = reference.ReferenceSearch(baseline, order=case["order"])

    def step(train_batch: reference.Batch, valid_batch: reference.Batch) -> tuple[float, float]:
        with _autocast(device, case["dtype"]):
            return reference_search.step(train_batch, valid_batch)

    return step, baseline


def _forward_backward(module: torch.nn.Module, batch: reference.Batch, dtype: str) -> None:
    """One forward/backward of the training loss, weights and alphas requiring gradients."""
    images, labels = batch
    with _autocast(images.device, dtype):
        logits = module(images)
    F.cross_entropy(logits.float(), labels).backward()


def _tensors_of(module: torch.nn.Module) -> list[torch.Tensor]:
    tensors = [*module.parameters(), *module.buffers()]
    arch = getattr(module, "arch_parameters", None)
    return tensors + (list(arch()) if arch else [])


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """Time and measure one (implementation, order, batch size, dtype) case in this process."""
    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    cuda = device.type == "cuda"
    step, module = _build(case, device)
    generator = torch.Generator().manual_seed(case["seed"] + 1)
    size = case["batch"]
    batches = [(_batch(generator, size, device), _batch(generator, size, device)) for _ in range(2)]
    if case["impl"] == "darts_core_cl":
        batches = [
            tuple((images.contiguous(memory_format=torch.channels_last), labels) for images, labels in pair)
            for pair in batches
        ]

    def synchronize() -> None:
        if cuda:
            torch.cuda.synchronize()

    result: dict[str, Any] = {key: case[key] for key in ("impl", "order", "batch", "dtype")}
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        gpu_before = torch.cuda.memory_allocated()
    rss_before = _current_rss_bytes()

    times, cpu_times = [], []
    total = case["warmup"] + case["repeats"]
    step_meter = SavedTensorMeter(_tensors_of(module))
    for index in range(total):
        train_batch, valid_batch = batches[index % len(batches)]
        # On CPU the last timed step also counts the live saved activations (a few microseconds per
        # saved tensor against seconds per step, nothing held). A CUDA step is short and bound by
        # Python, so there the count runs in an extra untimed step below.
        counted = index == total - 1 and not cuda
        meter_context = step_meter.active() if counted else contextlib.nullcontext()
        synchronize()
        started, cpu_started = time.perf_counter(), time.process_time()
        with meter_context:
            step(train_batch, valid_batch)
        synchronize()
        if index >= case["warmup"]:
            times.append(time.perf_counter() - started)
            cpu_times.append(time.process_time() - cpu_started)

    result["median_ms"] = 1000 * statistics.median(times)
    result["min_ms"] = 1000 * min(times)
    result["cpu_ms"] = 1000 * statistics.median(cpu_times)
    result["times_ms"] = [round(1000 * value) for value in times]
    result["peak_rss_delta_mb"] = (_peak_rss_bytes() - rss_before) / _MB
    if cuda:
        result["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / _MB
        result["peak_gpu_delta_mb"] = (torch.cuda.max_memory_allocated() - gpu_before) / _MB
        result["images_per_s"] = case["batch"] / (result["median_ms"] / 1000)
        result["epoch_s"] = math.ceil(EPOCH_IMAGES / case["batch"]) * result["median_ms"] / 1000

    # Deterministic memory figures (after the timings, so they do not disturb the peak above).
    train_batch, valid_batch = batches[0]
    if cuda:
        with step_meter.active():
            step(train_batch, valid_batch)
    meter = SavedTensorMeter(_tensors_of(module))
    with meter.active():
        _forward_backward(module, train_batch, case["dtype"])
    result["saved_mb"] = meter.total_bytes / _MB
    result["step_saved_mb"] = step_meter.peak_live_bytes / _MB

    if case.get("profile"):
        with torch.profiler.profile(activities=_profiler_activities(cuda)) as profiler:
            step(train_batch, valid_batch)
            synchronize()
        averages = profiler.key_averages()
        try:
            sort_by = "self_device_time_total" if cuda else "self_cpu_time_total"
            result["profile"] = averages.table(sort_by=sort_by, row_limit=case["profile"])
        except (AttributeError, KeyError):  # older torch names the device column after CUDA
            result["profile"] = averages.table(sort_by="self_cuda_time_total", row_limit=case["profile"])
    return result


def _profiler_activities(cuda: bool) -> list[torch.profiler.ProfilerActivity]:
    activities = [torch.profiler.ProfilerActivity.CPU]
    if cuda:
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    return activities


def _run_case_in_subprocess(case: dict[str, Any]) -> dict[str, Any]:
    command = [sys.executable, str(Path(__file__).resolve()), "--case", json.dumps(case)]
    completed = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in completed.stdout.splitlines():
        if line.startswith(_CASE_MARKER):
            return json.loads(line[len(_CASE_MARKER) :])
    raise RuntimeError(f"case {case} failed (exit {completed.returncode}):\n{completed.stderr[-4000:]}")


# --------------------------------------------------------------------------- report


def _ratio(numerator: float, denominator: float) -> str:
    return f"{numerator / denominator:.2f}x" if denominator else "-"


def format_table(results: list[dict[str, Any]], machine: dict[str, Any], cuda: bool) -> str:
    """A Markdown table: one row per (order, batch, dtype, darts_core variant, baseline it is compared to)."""
    by_key = {(r["order"], r["batch"], r["dtype"], r["impl"]): r for r in results}
    keys = sorted({key for key in by_key if key[3] in _BASELINES})
    header = [
        "order", "batch", "dtype", "core (vs ref)",
        "ref ms/step (min)", "core ms/step (min)", "speed-up",
        "ref CPU ms", "core CPU ms", "CPU speed-up",
        "ref saved MB", "core saved MB", "core/ref",
        "ref step saved MB", "core step saved MB", "core/ref",
    ]  # fmt: skip
    if cuda:
        header += ["ref peak GPU MB", "core peak GPU MB", "ref img/s", "core img/s"]
        header += ["ref epoch s", "core epoch s"]
    else:
        header += ["ref peak RSS MB", "core peak RSS MB"]
    lines = [
        "machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()),
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    rows = [
        (order, batch, dtype, impl, baseline)
        for order, batch, dtype, impl in keys
        for baseline in _BASELINES[impl]
        if (order, batch, dtype, baseline) in by_key
    ]
    for order, batch, dtype, impl, baseline in rows:
        ref = by_key[(order, batch, dtype, baseline)]
        core = by_key[(order, batch, dtype, impl)]
        row = [order, str(batch), dtype, f"{impl} (vs {baseline})"]
        row += [f"{r['median_ms']:.0f} ({r['min_ms']:.0f})" for r in (ref, core)]
        row += [_ratio(ref["median_ms"], core["median_ms"])]
        row += [f"{ref['cpu_ms']:.0f}", f"{core['cpu_ms']:.0f}", _ratio(ref["cpu_ms"], core["cpu_ms"])]
        row += [f"{ref['saved_mb']:.1f}", f"{core['saved_mb']:.1f}"]
        row += [_ratio(core["saved_mb"], ref["saved_mb"])]
        row += [f"{ref['step_saved_mb']:.1f}", f"{core['step_saved_mb']:.1f}"]
        row += [_ratio(core["step_saved_mb"], ref["step_saved_mb"])]
        if cuda:
            for key in ("peak_gpu_mb", "images_per_s", "epoch_s"):
                row += [f"{ref[key]:.0f}", f"{core[key]:.0f}"]
        else:
            row += [f"{ref['peak_rss_delta_mb']:.0f}", f"{core['peak_rss_delta_mb']:.0f}"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _progress_line(result: dict[str, Any]) -> str:
    return (
        f"{result['impl']:>17} {result['order']:>6} batch {result['batch']:>3} {result['dtype']}: "
        f"{result['median_ms']:8.0f} ms/step (CPU {result['cpu_ms']:.0f} ms; steps {result['times_ms']}), "
        f"saved {result['saved_mb']:.1f} MB, step saved {result['step_saved_mb']:.1f} MB"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=(
            "Time and measure one DARTS bilevel search step of darts_core against the DARTS reference "
            "and, with --impls pcdarts_reference pcdarts_core, the PC-DARTS mode against the PC-DARTS "
            "reference (32x32x3 input, 10 classes, 16 channels, 8 cells). Each case runs in a fresh "
            "subprocess; the implementations alternate case by case."
        )
    )
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64], help="default: 16 64")
    parser.add_argument("--orders", nargs="+", choices=["first", "second"], default=["first", "second"])
    parser.add_argument(
        "--dtypes",
        nargs="+",
        choices=["fp32", "bf16"],
        default=None,
        help="default: fp32 on CPU, fp32 and bf16 on CUDA (bf16 = autocast, fp32 parameters)",
    )
    parser.add_argument(
        "--impls",
        nargs="+",
        choices=IMPLEMENTATIONS,
        default=["reference", "darts_core"],
        help="implementations to run (default: reference darts_core; darts_core_cl = darts_core in "
        "channels_last memory format; pcdarts_reference, pcdarts_core = PC-DARTS with K = "
        "--partial-channels and edge normalization; gdas_core, drnas_core, darts_minus_core, "
        "random_ws_core, fair_darts_core, beta_darts_core, sdarts_rs_core, sdarts_adv_core = darts_core "
        "with that method; GDAS, DrNAS, random_ws, FairDARTS and SDARTS are first order only)",
    )
    parser.add_argument(
        "--partial-channels", type=int, default=4, metavar="K", help="K of the PC-DARTS cases (default 4)"
    )
    parser.add_argument(
        "--warmup", type=int, default=None, help="untimed steps first (default: 0 on CPU, 2 on CUDA)"
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="timed steps per case (default: 2 on CPU, 10 on CUDA)"
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--channels", type=int, default=16, help="initial channels (default 16)")
    parser.add_argument("--cells", type=int, default=8, help="cells (default 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a fast look (a few minutes on a 2-core CPU): batch 16 only, 1 timed step on CPU (3 after "
        "1 warm-up on CUDA); overrides those options",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="OUT", help="save the results as JSON")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="ROWS",
        help="also profile one more step of every case and print its ROWS most expensive operators",
    )
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: run one case, print it
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.case is not None:
        print(_CASE_MARKER + json.dumps(run_case(json.loads(args.case))), flush=True)
        return 0
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available on this machine")
    cuda = args.device == "cuda"
    # A CPU step of the reference takes seconds to minutes: few, long steps; CUDA steps are short.
    if args.quick:
        args.batch_sizes, args.warmup, args.repeats = [16], (1 if cuda else 0), (3 if cuda else 1)
    if args.warmup is None:
        args.warmup = 2 if cuda else 0
    if args.repeats is None:
        args.repeats = 10 if cuda else 2
    if args.repeats < 1 or args.warmup < 0:
        raise SystemExit("--repeats must be >= 1 and --warmup >= 0")
    dtypes = args.dtypes or (["fp32", "bf16"] if cuda else ["fp32"])
    torch.set_num_threads(args.threads)
    machine = _machine()

    results = []
    for order in args.orders:
        for batch in args.batch_sizes:
            for dtype in dtypes:
                for impl in args.impls:
                    if impl in _FIRST_ORDER_ONLY and order == "second":
                        continue  # GDAS and DrNAS are first order
                    case = {
                        "impl": impl,
                        "order": order,
                        "batch": batch,
                        "dtype": dtype,
                        "device": args.device,
                        "threads": args.threads,
                        "warmup": args.warmup,
                        "repeats": args.repeats,
                        "channels": args.channels,
                        "cells": args.cells,
                        "seed": args.seed,
                        "profile": args.profile,
                        "partial_channels": args.partial_channels,
                    }
                    result = _run_case_in_subprocess(case)
                    print(_progress_line(result), file=sys.stderr, flush=True)
                    if "profile" in result:
                        print(result.pop("profile"), file=sys.stderr, flush=True)
                    results.append(result)
    machine["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
    print(format_table(results, machine, cuda))
    if args.json is not None:
        report = {"machine": machine, "args": vars(args), "results": results}
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
