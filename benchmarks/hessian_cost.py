"""Cost of the dominant Hessian eigenvalue (darts_core.search.collapse) against one first-order search step.

Builds a SearchNetwork, takes one first-order DartsSearch step (timed), then times
``dominant_hessian_eigenvalue`` with one power iteration and with ``--iterations`` (process CPU time),
and prints the set-up cost (graph + first product) and the cost of each further iteration.

    .venv/bin/python benchmarks/hessian_cost.py                  # the digits configuration
    .venv/bin/python benchmarks/hessian_cost.py --cells 8 --channels 16 --size 32 --in-channels 3 --batch 16
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

_REPO_ROOT = Path(__file__).resolve().parents[1]
if str(_REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(_REPO_ROOT))

from darts_core.nn.search_network import SearchNetwork  # noqa: E402
from darts_core.search.bilevel import DartsSearch  # noqa: E402
from darts_core.search.collapse import dominant_hessian_eigenvalue  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=5)
    parser.add_argument("--channels", type=int, default=8)
    parser.add_argument("--size", type=int, default=8, help="image height and width")
    parser.add_argument("--in-channels", type=int, default=1)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iterations", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = SearchNetwork(args.in_channels, 10, init_channels=args.channels, cells=args.cells)
    images = torch.randn(args.batch, args.in_channels, args.size, args.size)
    labels = torch.randint(0, 10, (args.batch,))
    search = DartsSearch(network)
    started = time.process_time()
    search.step((images, labels), (images, labels))
    step = time.process_time() - started
    started = time.process_time()
    dominant_hessian_eigenvalue(network, (images, labels), iterations=1, tolerance=0.0)
    one = time.process_time() - started
    started = time.process_time()
    result = dominant_hessian_eigenvalue(network, (images, labels), iterations=args.iterations, tolerance=0.0)
    many = time.process_time() - started
    per_iteration = (many - one) / max(1, args.iterations - 1)
    print(
        f"{args.cells} cells, {args.channels} channels, {args.size}x{args.size}x{args.in_channels}, batch "
        f"{args.batch}, {args.threads} thread(s): first-order step {step:.2f} s CPU; eigenvalue set-up and "
        f"first product {one:.2f} s, each further iteration {per_iteration:.2f} s (value {result.value:.4g})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
