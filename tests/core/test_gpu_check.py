"""benchmarks/gpu_check.sh runs end to end at its tiny size on CPU and says honestly what it measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_tiny_on_cpu_and_writes_its_report_to_out(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OUT": str(tmp_path),
        "GPU_CHECK_TINY": "1",
        "PYTHON": sys.executable,
        "CUDA_VISIBLE_DEVICES": "",
    }
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # torch.compile of one case takes a minute or two on this CPU
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["tiny"] is True
    assert report["cuda"] is False and report["device"] == "no CUDA: CPU only"
    assert report["parity"] == {"skipped": "no CUDA: nothing to compare the CPU search with"}
    errors = report["second_order_gradient_error"]
    assert errors["fp32"] == 0.0 and errors["bf16"] <= 1e-6  # the second-order step runs in exact fp32
    cases = {(row["case"], row["dtype"]) for row in report["step_costs"]}
    assert {("darts-1st", "fp32"), ("darts-2nd", "bf16"), ("pc-darts", "bf16")} <= cases
    assert all(row["ms_per_step"] > 0 and row["peak_memory_bytes"] is None for row in report["step_costs"])
    compiled = [row for row in report["step_costs"] if row["compile"]]
    assert [(row["case"], row["dtype"]) for row in compiled] == [("darts-1st", "fp32")]
    assert "error" not in compiled[0]  # torch.compile worked here (a C++ compiler is needed on CPU)
    assert (tmp_path / "gpu_check.log").exists() and torch.__version__ in (tmp_path / "env.txt").read_text()
