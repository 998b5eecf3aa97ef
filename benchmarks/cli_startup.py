"""Start-up time and peak memory of the `darts` command (a benchmark, not a timed test).

Each command runs as a fresh process, `--runs` times; the figures are the median wall time and the
largest peak resident memory (the child's ru_maxrss). `darts list` runs with no login saved, so it
stops at "not logged in" after its imports: that is the start-up cost of every remote command.

    python benchmarks/cli_startup.py                         # this checkout
    python benchmarks/cli_startup.py --repo /tmp/old --module darts_core.cli   # another tree (before)
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

COMMANDS = (["--help"], ["list"], ["status", "0"], ["watch", "0"], ["datasets", "--help"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--module", default="darts_core.cli.main", help="the entry point module")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as config_dir:
        env = {**os.environ, "DARTS_CONFIG_DIR": config_dir, "PYTHONPATH": str(args.repo)}
        env.pop("DARTS_URL", None)
        env.pop("DARTS_TOKEN", None)
        print(f"machine: {platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}")
        print(f"tree: {args.repo} (entry point {args.module}), {args.runs} runs each")
        print(f"{'command':<22} {'median s':>9} {'min s':>7} {'peak RSS MB':>12} {'torch':>6}")
        for command in COMMANDS:
            # A wrapper process per run: ru_maxrss of its children is then this command's peak alone.
            times, peaks, torch_loaded = [], [], False
            for _ in range(args.runs):
                code = (
                    "import resource, subprocess, sys, time; start = time.perf_counter(); "
                    "subprocess.run(sys.argv[1:]); print(time.perf_counter() - start, "
                    "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
                )
                probe = (
                    "import atexit, runpy, sys; atexit.register(lambda: sys.stderr.write("
                    "'TORCH_LOADED=%s\\n' % ('torch' in sys.modules))); "
                    "sys.argv = ['darts', *sys.argv[1:]]; "
                    f"runpy.run_module({args.module!r}, run_name='__main__')"
                )
                result = subprocess.run(
                    [sys.executable, "-c", code, sys.executable, "-c", probe, *command],
                    cwd=args.repo, env=env, capture_output=True, text=True, timeout=120,
                )  # fmt: skip
                seconds, peak_kib = result.stdout.strip().splitlines()[-1].split()
                times.append(float(seconds))
                peaks.append(int(peak_kib) * 1024)
                torch_loaded = torch_loaded or "TORCH_LOADED=True" in result.stderr
            print(
                f"darts {' '.join(command):<16} {statistics.median(times):>9.2f} {min(times):>7.2f} "
                f"{max(peaks) / 2**20:>12.0f} {'yes' if torch_loaded else 'no':>6}"
            )


if __name__ == "__main__":
    main()
