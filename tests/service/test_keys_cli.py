"""`darts-service keys create|list|revoke`, run as a user would (subprocesses), against the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from app.commands.keys import ensure_admin_key
from app.db import make_engine, make_session_factory, run_migrations
from app.services import keys as key_service
from app.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]


def keys(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "keys", *args],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_keys_round_trip_against_database_url(service_env: dict[str, str], client: TestClient) -> None:
    env = {**os.environ, **service_env}
    name = f"ana-{uuid.uuid4().hex[:8]}"

    created = keys(env, "create", "--name", name)
    assert created.returncode == 0, created.stderr
    # The key alone on one line: KEY=$(darts-service keys create --name ana) works.
    assert created.stdout.count("\n") == 1
    key = created.stdout.strip()
    assert key.startswith("dsk_") and " " not in key and len(key) >= 40
    assert "shown only this once" in created.stderr

    headers = {"Authorization": f"Bearer {key}"}
    search = client.post("/searches", json={"dataset": {"name": "digits"}}, headers=headers)
    assert search.status_code == 201 and search.json()["owner"] == name

    listed = keys(env, "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["NAME", "CREATED", "LAST", "USED", "ADMIN", "REVOKED"]
    [row] = [row for row in rows if row.split()[0] == name]
    assert row.split()[-2:] == ["no", "-"]  # admin, revoked
    assert key not in listed.stdout
    deadline = time.monotonic() + 10  # the API writes the use from a thread of its own
    while True:
        [record] = [r for r in json.loads(keys(env, "list", "--json").stdout) if r["name"] == name]
        if record["last_used_at"] is not None or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert record["admin"] is False and record["revoked_at"] is None
    assert record["last_used_at"] is not None  # the request above

    duplicate = keys(env, "create", "--name", name)
    assert duplicate.returncode == 1 and duplicate.stdout == ""
    assert "exists already" in duplicate.stderr
    bad_name = keys(env, "create", "--name", "has space")
    assert bad_name.returncode == 1 and "invalid key name" in bad_name.stderr

    revoked = keys(env, "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    assert client.get("/searches", headers=headers).status_code == 401  # key cache off in these tests
    [record] = [r for r in json.loads(keys(env, "list", "--json").stdout) if r["name"] == name]
    assert record["revoked_at"] is not None
    unknown = keys(env, "revoke", f"nobody-{uuid.uuid4().hex[:8]}")
    assert unknown.returncode == 1 and "no key named" in unknown.stderr


def test_keys_with_data_dir_use_the_database_of_up(tmp_path: Path, service_settings: Settings) -> None:
    """`--data-dir DIR` is the SQLite file `darts-service up --data-dir DIR` uses (DATABASE_URL unset)."""
    env = {key: value for key, value in os.environ.items() if key not in ("DATABASE_URL", "DATA_DIR")}
    data_dir = tmp_path / "stack"
    missing = keys(env, "list", "--data-dir", str(data_dir))
    assert missing.returncode == 1 and "no database under" in missing.stderr

    run_migrations(Settings(data_dir=data_dir, database_url=None))
    created = keys(env, "create", "--name", "boss", "--admin", "--data-dir", str(data_dir))
    assert created.returncode == 0, created.stderr
    [record] = json.loads(keys(env, "list", "--json", "--data-dir", str(data_dir)).stdout)
    assert record["name"] == "boss" and record["admin"] is True
    assert (data_dir / "darts.db").exists()


def test_up_s_admin_key_is_made_once_per_database_and_kept_private(tmp_path: Path) -> None:
    """`ensure_admin_key`, what `up` runs after its migrations and before the API starts."""
    data_dir = tmp_path / "stack"
    settings = Settings(data_dir=data_dir, database_url=None)
    run_migrations(settings)
    key = ensure_admin_key(settings, data_dir)
    key_file = data_dir / "admin.key"
    assert key_file.read_text() == f"{key}\n"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert [path.name for path in data_dir.iterdir() if path.name.startswith(".")] == []  # no temporary left
    assert ensure_admin_key(settings, data_dir) == key  # a later start: the same key

    engine = make_engine(settings)
    with make_session_factory(engine)() as session:
        owner = key_service.authenticate(session, key)
        assert owner == key_service.Owner(name="admin", admin=True)
        key_service.revoke_key(session, "admin")
    engine.dispose()
    assert ensure_admin_key(settings, data_dir) is None  # revoked: not replaced behind the admin's back
    assert key_file.read_text() == f"{key}\n"

    # A database made anew under the same directory: its first start makes a new admin key.
    (data_dir / "darts.db").unlink()
    run_migrations(settings)
    new_key = ensure_admin_key(settings, data_dir)
    assert new_key not in (None, key)
    assert key_file.read_text() == f"{new_key}\n" and key_file.stat().st_mode & 0o777 == 0o600


def _migrate(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli", "migrate"], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=120,
    )


def test_migrate_stores_the_bootstrap_admin_key_once(tmp_path: Path) -> None:
    """The compose deployment's first credential: BOOTSTRAP_ADMIN_KEY, stored hashed by `migrate`."""
    database_url = f"sqlite:///{tmp_path / 'deploy.db'}"
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env["DATABASE_URL"] = database_url

    short = _migrate({**env, "BOOTSTRAP_ADMIN_KEY": "too-short"})
    assert short.returncode == 2 and "BOOTSTRAP_ADMIN_KEY must start with 'dsk_'" in short.stderr

    chosen = "dsk_operator-chosen-" + uuid.uuid4().hex
    first = _migrate({**env, "BOOTSTRAP_ADMIN_KEY": chosen})
    assert first.returncode == 0, first.stderr
    assert "bootstrap admin key 'admin': stored" in first.stdout
    again = _migrate({**env, "BOOTSTRAP_ADMIN_KEY": "dsk_another-operator-key-" + uuid.uuid4().hex})
    assert again.returncode == 0 and "left as it is" in again.stdout

    engine = make_engine(Settings(database_url=database_url))
    try:
        with make_session_factory(engine)() as session:
            owner = key_service.authenticate(session, chosen)
            assert owner is not None and owner.name == "admin" and owner.admin
            assert chosen not in {row.key_hash for row in key_service.list_keys(session)}
            assert [row.name for row in key_service.list_keys(session)] == ["admin"]
    finally:
        engine.dispose()
