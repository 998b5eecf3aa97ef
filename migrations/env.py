"""Alembic environment: the database comes from app.settings, never from alembic.ini.

`app.db.run_migrations(settings)` passes its Settings in `config.attributes["settings"]`; the `alembic`
command line falls back to `get_settings()` (the environment: DATABASE_URL). A PostgreSQL schema is
chosen by the URL's `options=-csearch_path=<schema>` (see `app.db.with_search_path`), so the tables and
the `alembic_version` table both land in it.
"""

from __future__ import annotations

from alembic import context

from app.db import make_engine
from app.models import Base
from app.settings import get_settings

config = context.config
settings = config.attributes.get("settings") or get_settings()
target_metadata = Base.metadata


def run_migrations_offline() -> None:
    context.configure(
        url=settings.sqlalchemy_url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=settings.sqlalchemy_url.startswith("sqlite"),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(settings)
    try:
        with engine.connect() as connection:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                # SQLite cannot ALTER most things: batch mode rebuilds the table instead.
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
            )
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
