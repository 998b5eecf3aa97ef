"""`python -m worker`: one Celery worker on the searches queue (what `darts-service worker` runs).

One search at a time, in this process (`--pool=solo`: no fork, so CUDA is safe), prefetch 1. Start
one per GPU with CUDA_VISIBLE_DEVICES set. Needs REDIS_URL and DATABASE_URL.
"""

from __future__ import annotations

import argparse
import os
import socket

from celery import Celery

from app.settings import get_settings
from app.worker_heartbeat import start_heartbeat
from worker.celery_app import create_worker_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m worker", description=__doc__.splitlines()[0])
    parser.add_argument("--loglevel", default="info", help="Celery log level (debug, info, warning)")
    parser.add_argument("--hostname", default=None, help="Celery node name (default darts-<pid>@<host>)")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="CPU threads of torch in a search (sets OMP_NUM_THREADS); 0 leaves it as it is",
    )
    options = parser.parse_args(argv)
    if options.threads:
        # Read by torch when the task imports it (in this process: the solo pool does not fork).
        os.environ["OMP_NUM_THREADS"] = str(options.threads)
    settings = get_settings()
    celery = create_worker_app(settings)
    hostname = options.hostname or f"darts-{os.getpid()}@{socket.gethostname()}"
    # /readyz counts the workers whose heartbeat is fresh (app.worker_heartbeat).
    stop_heartbeat = start_heartbeat(settings, hostname)
    try:
        _consume(celery, settings.celery_queue, options.loglevel, hostname)
    finally:
        stop_heartbeat.set()


def _consume(celery: Celery, queue: str, loglevel: str, hostname: str) -> None:
    celery.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--queues={queue}",
            f"--loglevel={loglevel.upper()}",
            f"--hostname={hostname}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


if __name__ == "__main__":
    main()
