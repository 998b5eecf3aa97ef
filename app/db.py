"""Database plumbing: engines, sessions, the FastAPI session dependency and migrations.

The schema is made only by Alembic (`run_migrations`); nothing here calls `create_all`.

PostgreSQL schema isolation (test runs, several deployments in one database) is carried by the URL
itself, so every process that reads `DATABASE_URL` (API, ingester, Celery worker) lands in the same
schema: `postgresql://host/db?options=-csearch_path%3D<schema>` (see `with_search_path`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast
from urllib.parse import quote

from fastapi import Depends, Request
from sqlalchemy import CursorResult, Engine, Result, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every timestamp we store)."""
    return datetime.now(UTC)


def with_search_path(url: str, schema: str) -> str:
    """`url` (a PostgreSQL URL) with its connections' `search_path` set to `schema`.

    libpq passes `options` to the server at connect time, so tables, the Alembic version table and
    every query of every process using this URL live in that schema.
    """
    if not url.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        raise ValueError(f"with_search_path needs a PostgreSQL URL, got {url!r}")
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}', safe='')}"


# A database that cannot be reached must fail a connect or a query within seconds, never hang it: a
# worker's lease heartbeat has 0.6 of a lease period to notice, and the ingester and the API retry.
# libpq's keepalives and TCP_USER_TIMEOUT (ms) end a connection whose peer vanished without a word
# (a network cut); over a unix socket libpq ignores them.
POSTGRES_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


def _sqlite_on_connect(dbapi_connection: Any, _connection_record: Any) -> None:
    # WAL lets the API read while the ingester writes; foreign keys are off by default in SQLite,
    # and ON DELETE CASCADE of search_epochs needs them.
    # synchronous=NORMAL (SQLite's advice for WAL): a commit no longer waits for an fsync (measured
    # here: 4 ms a commit with FULL, 0.06 ms with NORMAL, far more with other processes writing).
    # Writers queue on SQLite's one write lock, so under issue 10's burst the fsyncs made every
    # submission wait seconds while holding one of the API's database slots. A killed process loses
    # nothing; an OS crash or power loss may roll back the last commits, never corrupt the file.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


def make_engine(settings: Settings) -> Engine:
    """An engine for `settings.sqlalchemy_url` (SQLite file or PostgreSQL through psycopg 3)."""
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            pool_size=settings.db_pool_size,
            max_overflow=0,
        )
        event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    # No overflow: the API's gate (app.db_gate) admits exactly pool_size requests at once.
    return create_engine(
        url,
        pool_pre_ping=True,
        pool_size=settings.db_pool_size,
        max_overflow=0,
        connect_args=POSTGRES_CONNECT_ARGS,
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded attributes after commit (routes serialise rows after committing)."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_db(request: Request) -> Iterator[Session]:
    """FastAPI dependency: one session per request, from the app's session factory.

    Services commit explicitly; whatever a failed request left uncommitted is rolled back on close.
    """
    factory: sessionmaker[Session] = request.app.state.session_factory
    session = factory()
    try:
        yield session
    finally:
        session.close()


SessionDep = Annotated[Session, Depends(get_db)]


def affected_rows(result: Result[Any]) -> int:
    """The number of rows an UPDATE or DELETE changed (its result is a CursorResult at run time)."""
    return int(cast("CursorResult[Any]", result).rowcount)


def alembic_config(settings: Settings) -> Config:
    """An Alembic `Config` for our migrations pointed at `settings`' database."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # env.py reads the URL from here (not from the environment) so a caller's Settings win.
    config.attributes["settings"] = settings
    return config


def run_migrations(settings: Settings, revision: str = "head") -> None:
    """`alembic upgrade head` on `settings`' database (used by `darts-service up` and the tests)."""
    from alembic import command

    command.upgrade(alembic_config(settings), revision)
