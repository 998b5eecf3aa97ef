"""`darts-service keys ...` (create, list, revoke API keys), and the access `darts-service up` sets up.

Keys live in the database at DATABASE_URL, or with `--data-dir DIR` in the one `darts-service up
--data-dir DIR` uses (its SQLite file unless DATABASE_URL is set: the same rule as `up`).
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from app.db import make_engine, make_session_factory
from app.services import keys as key_service
from app.settings import Settings, get_settings

ADMIN_KEY_FILE = "admin.key"
ADMIN_KEY_NAME = "admin"

keys_cli = typer.Typer(
    name="keys",
    help="Create, list and revoke API keys (every API route but /healthz, /readyz and the page needs one).",
    no_args_is_help=True,
    add_completion=False,
)

DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Use the database of `darts-service up --data-dir DIR` (default: DATABASE_URL).",
        show_default=False,
    ),
]


def _settings(data_dir: Path | None) -> Settings:
    return get_settings() if data_dir is None else Settings(data_dir=data_dir.resolve())


@contextmanager
def _key_store(data_dir: Path | None) -> Iterator[Session]:
    """A session on the keys' database; a missing schema is a clear error (exit 1), not a traceback."""
    settings = _settings(data_dir)
    if data_dir is not None and not settings.database_url and not (settings.data_dir / "darts.db").exists():
        _fail(f"no database under {settings.data_dir}: start `darts-service up --data-dir {data_dir}` once")
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            try:
                yield session
            except (OperationalError, ProgrammingError) as exc:
                _fail(
                    f"the database at {engine.url.render_as_string(hide_password=True)} has no usable "
                    f"api_keys table ({type(exc).__name__}): run `darts-service migrate` first"
                )
    finally:
        engine.dispose()


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=1)


@keys_cli.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="The owner name of what the key creates (unique).")],
    admin: Annotated[
        bool, typer.Option("--admin", help="The key sees and manages every owner's work.")
    ] = False,
    data_dir: DataDirOption = None,
) -> None:
    """Create a key and print it alone on one line: `KEY=$(darts-service keys create --name ana)`.

    Only its hash is stored: the key is shown this once.
    """
    with _key_store(data_dir) as session:
        try:
            _row, key = key_service.create_key(session, name, admin=admin)
        except key_service.KeyStoreError as exc:
            _fail(str(exc))
    typer.echo(key)
    typer.echo(f"created {'admin ' if admin else ''}key {name!r}; it is shown only this once", err=True)


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment else "-"


@keys_cli.command("list")
def list_(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array instead of a table.")] = False,
    data_dir: DataDirOption = None,
) -> None:
    """List keys: name, created, last used, admin, revoked (never the keys themselves)."""
    with _key_store(data_dir) as session:
        rows = key_service.list_keys(session)
    if as_json:
        records = [
            {
                "name": row.name,
                "created_at": row.created_at.isoformat(),
                "last_used_at": row.last_used_at.isoformat() if row.last_used_at else None,
                "admin": row.admin,
                "revoked_at": row.revoked_at.isoformat() if row.revoked_at else None,
            }
            for row in rows
        ]
        typer.echo(json.dumps(records, indent=2))
        return
    table = [("NAME", "CREATED", "LAST USED", "ADMIN", "REVOKED")]
    table += [
        (
            row.name,
            _when(row.created_at),
            _when(row.last_used_at),
            "yes" if row.admin else "no",
            _when(row.revoked_at),
        )
        for row in rows
    ]
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    for line in table:
        typer.echo("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())


@keys_cli.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The key's name.")],
    data_dir: DataDirOption = None,
) -> None:
    """Revoke a key: from now on requests with it get 401. What its owner created stays."""
    with _key_store(data_dir) as session:
        try:
            row = key_service.revoke_key(session, name)
        except key_service.KeyStoreError as exc:
            _fail(str(exc))
        typer.echo(f"key {name!r} revoked at {_when(row.revoked_at)}")


# ------------------------------------------------------------------------------ `darts-service up`


def is_loopback(host: str) -> bool:
    """Whether `host` only takes connections from this machine (`up --no-auth` is refused otherwise)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable by this user only (0600) from its first byte, atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # O_CREAT's mode is masked by the umask; this is not
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)


def ensure_admin_key(settings: Settings, data_dir: Path) -> str | None:
    """The admin key of `up`'s data directory: on the first start (no `<data-dir>/admin.key` yet, or one
    whose key this database has never seen: a database made anew) a new admin key (named `admin`, or
    `admin-N` when taken) written alone to that file, mode 0600; later, the key in the file. None, with
    a warning, when the file's key was revoked: a revocation is never undone behind the admin's back."""
    path = data_dir / ADMIN_KEY_FILE
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            if path.exists():
                key = path.read_text().strip()
                if key_service.authenticate(session, key) is not None:
                    return key
                if key_service.is_known(session, key):
                    typer.echo(
                        f"warning: the key in {path} is revoked; create one with "
                        "`darts-service keys create --admin --name NAME`",
                        err=True,
                    )
                    return None
            _row, key = key_service.create_unique_key(session, ADMIN_KEY_NAME, admin=True)
    finally:
        engine.dispose()
    _write_private(path, key + "\n")
    return key


def login_url(host: str, port: int, key: str | None) -> str:
    """The page's address as `up` prints it, with the key in `?token=` (the page keeps it and drops it
    from the address bar)."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown:
        shown = f"[{shown}]"
    return f"http://{shown}:{port}/" + (f"?token={key}" if key else "")
