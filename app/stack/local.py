"""`darts-service up`: the whole stack on one machine, as a `LocalStack` started and stopped in steps.

`start()` runs the steps in order: the data directory, the database (a SQLite file, or an embedded
PostgreSQL with `postgres`), Redis (embedded unless REDIS_URL is set), the settings every child
inherits, migrations and the admin key, the worker, the ingester. `serve()` runs the API until Ctrl-C
or SIGTERM; `stop()` takes the parts down in the reverse order, whatever `start()` got to.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

from app.commands.keys import ensure_admin_key, login_url
from app.settings import Settings, get_settings
from app.stack.embedded_postgres import EmbeddedPostgres
from app.stack.embedded_redis import EmbeddedRedis
from app.stack.processes import die_with_parent, ingester_command, worker_command
from app.stack.supervisor import SupervisedProcess

logger = logging.getLogger("darts_service")

# How long `up` waits for the worker to stop after Ctrl-C: a running search stops at its next batch
# and is handed back to the queue (it resumes from its checkpoint on the next start).
WORKER_STOP_SECONDS = 60.0


def up_worker_threads() -> int | None:
    """Torch threads of the worker `up` starts: every core this process may run on but one, which the
    API, the ingester and Redis share (torch's threads wait for each other at every operation, so one
    descheduled thread stalls them all: on 2 cores under 100 polling clients a 2-thread worker finished
    1 epoch a minute). None when OMP_NUM_THREADS is set: the user's choice stands."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores - 1)


def _threads_option(threads: int | None) -> list[str]:
    return [] if threads is None else ["--threads", str(threads)]


def _started(embedded: EmbeddedRedis) -> subprocess.Popen[bytes]:
    """Start (or start again) the embedded Redis server and return its process."""
    process = embedded.start().process
    assert process is not None
    return process


class LocalStack:
    """The parts of `darts-service up` (see the module docstring); `say` prints the login line."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        data_dir: Path,
        loglevel: str,
        postgres: bool,
        no_auth: bool,
        say: Callable[[str], None] = print,
    ) -> None:
        self.host = host
        self.port = port
        self.data_dir = data_dir.resolve()
        self.loglevel = loglevel
        self.postgres = postgres
        self.no_auth = no_auth
        self.say = say
        self.env = dict(os.environ)
        self.settings: Settings | None = None
        self.embedded_postgres: EmbeddedPostgres | None = None
        self.redis_server: SupervisedProcess | None = None
        self.worker: SupervisedProcess | None = None
        self.ingester: SupervisedProcess | None = None

    def prepare_data_dir(self) -> None:
        """The data directory, and the SQLite file in it unless DATABASE_URL or `postgres` says else."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.env["DATA_DIR"] = str(self.data_dir)
        if not self.env.get("DATABASE_URL") and not self.postgres:
            self.env["DATABASE_URL"] = f"sqlite:///{self.data_dir / 'darts.db'}"

    def start(self) -> None:
        """Every part but the API, in order, after `prepare_data_dir()` (`stop()` undoes what ran, also
        when a step failed)."""
        assert self.env.get("DATA_DIR") == str(self.data_dir), "prepare_data_dir() first"
        self.start_database()
        self.start_redis()
        settings = self.settle_settings()
        self.migrate_and_open_access(settings)
        self.start_worker(settings)
        self.start_ingester()

    def start_database(self) -> None:
        if not self.postgres:
            return
        # Like the embedded Redis: a session of its own, stopped last, dies with us.
        self.embedded_postgres = EmbeddedPostgres(
            self.data_dir / "postgres", new_session=True, preexec_fn=die_with_parent()
        )
        self.embedded_postgres.start()
        self.env["DATABASE_URL"] = self.embedded_postgres.url

    def start_redis(self) -> None:
        if self.env.get("REDIS_URL"):
            return
        # Its own process group: Ctrl-C must not stop Redis before the worker has handed its
        # search back to the queue. It is stopped last (or dies with us: die_with_parent).
        # Restarted when it dies; its append-only file keeps the queue and the events.
        embedded = EmbeddedRedis(self.data_dir / "redis", new_session=True, preexec_fn=die_with_parent())
        self.redis_server = SupervisedProcess(
            "redis-server", lambda: _started(embedded), stop_timeout=10.0
        ).start()
        self.env["REDIS_URL"] = embedded.url

    def settle_settings(self) -> Settings:
        """This process's environment becomes what every child inherits; the settings read from it."""
        os.environ.update(self.env)
        get_settings.cache_clear()
        settings = Settings().with_bind_host(self.host)
        embedded_db = " (embedded)" if self.embedded_postgres else ""
        logger.info("database %s%s", settings.sqlalchemy_url, embedded_db)
        logger.info("redis %s%s", settings.redis_url, " (embedded)" if self.redis_server else "")
        return settings

    def migrate_and_open_access(self, settings: Settings) -> None:
        from app.db import run_migrations

        run_migrations(settings)
        # Before the API answers anything: admin.key exists by the time the first request is served.
        key = None if self.no_auth else ensure_admin_key(settings, self.data_dir)
        self.settings = settings.model_copy(update={"no_auth": self.no_auth})
        open_note = " (open: --no-auth)" if self.no_auth else ""
        self.say(f"darts-service: log in at {login_url(self.host, self.port, key)}{open_note}")

    def start_worker(self, settings: Settings) -> None:
        from app.db import make_engine, make_session_factory
        from app.lifecycle.lease import owner_prefix
        from app.lifecycle.sweep import release_leases_of

        leases = make_session_factory(make_engine(settings))

        def worker_died(pid: int, _code: int) -> None:
            # Its searches need not wait for their leases to expire: hand them back now.
            released = release_leases_of(leases, owner_prefix(pid))
            if released:
                logger.warning("released %d lease(s) of the dead worker (pid %s)", released, pid)

        self.worker = SupervisedProcess(
            "worker",
            lambda: subprocess.Popen(
                [*worker_command(self.loglevel), *_threads_option(up_worker_threads())],
                env=self.env,
                preexec_fn=die_with_parent(),
            ),
            on_exit=worker_died,
            stop_timeout=WORKER_STOP_SECONDS,
        ).start()

    def start_ingester(self) -> None:
        # Its own process, not a thread of the API's: storing events and sweeping leases never
        # compete with requests for the API's interpreter (issue 10's load), and the API answering
        # is not what keeps SQL current.
        self.ingester = SupervisedProcess(
            "ingester",
            lambda: subprocess.Popen(
                ingester_command(self.loglevel), env=self.env, preexec_fn=die_with_parent()
            ),
            stop_timeout=10.0,
        ).start()

    def serve(self) -> bool:
        """Run the API until Ctrl-C / SIGTERM; False when it never started (its port taken)."""
        import uvicorn

        from app.main import create_app

        assert self.settings is not None, "start() first"
        app = create_app(self.settings, run_ingester=False)
        parts = (self.redis_server, self.worker, self.ingester)
        app.state.supervised = [part for part in parts if part is not None]
        # log_config=None: uvicorn's loggers keep ours (configured before) instead of its own handlers.
        server = uvicorn.Server(
            uvicorn.Config(
                app, host=self.host, port=self.port, log_level=self.loglevel.lower(), log_config=None
            )
        )
        server.run()  # returns on Ctrl-C / SIGTERM (and re-raises the signal afterwards)
        return bool(server.started)

    def stop(self) -> None:
        """Take down whatever `start()` got to, the ingester first and the servers last."""
        from app.events.ingester import drain_events

        # Signals during the cleanup would cut it short; the stack is already going down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        # The ingester first (Ctrl-C reached it too: it must not be restarted meanwhile).
        if self.ingester is not None:
            self.ingester.stop()
        if self.worker is not None:
            self.worker.stop()
            # Store what the worker said while stopping.
            with contextlib.suppress(Exception):
                drain_events(Settings())
        if self.redis_server is not None:
            self.redis_server.stop()
        if self.embedded_postgres is not None:
            self.embedded_postgres.stop()
        logger.info("darts-service stopped")
