"""`python -m worker`: one Celery worker on the jobs queue (what `darts-service worker` runs).

One job (a search or a training) at a time, in this process (`--pool=solo`: no fork, so CUDA is
safe), prefetch 1. Start one per GPU with CUDA_VISIBLE_DEVICES set. Needs REDIS_URL and DATABASE_URL.
"""

from __future__ import annotations

import argparse
import os
import socket

from app.logging_config import configure_logging, wants_json
from app.settings import get_settings
from worker.celery_app import create_worker_app
from worker.memory_cap import apply_memory_cap


def lower_priority(nice: int) -> None:
    """Run at Unix nice value `nice` at least: a job is batch work, the API beside it answers people."""
    if nice and hasattr(os, "getpriority"):
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if current < nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("--loglevel", default="info", help="Celery log level (debug, info, warning)")
    parser.add_argument("--hostname", default=None, help="Celery node name (default darts-<pid>@<host>)")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="CPU threads of torch in a job (sets OMP_NUM_THREADS); 0 leaves it as it is",
    )
    options = parser.parse_args(argv)
    if options.threads:
        # Read by torch when the task imports it (in this process: the solo pool does not fork).
        os.environ["OMP_NUM_THREADS"] = str(options.threads)
    settings = get_settings()
    # Before Celery starts: what it says before its logging is set up (worker/logs.py) is formatted too.
    configure_logging(options.loglevel, settings.log_format)
    # JSON logs: no start-up banner on stdout either, so every line a collector reads is JSON.
    quiet = ["--quiet"] if wants_json(settings.log_format) else []
    apply_memory_cap(settings.worker_memory_bytes)
    lower_priority(settings.worker_nice)
    celery = create_worker_app(settings)
    celery.worker_main(
        [
            *quiet,
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--queues={settings.celery_queue}",
            f"--loglevel={options.loglevel.upper()}",
            f"--hostname={options.hostname or f'darts-{os.getpid()}@{socket.gethostname()}'}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
