"""`darts-service keys create|list|revoke`, run as a user would (subprocesses), against the API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

from fastapi.testclient import TestClient

from app.db import run_migrations
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
    [record] = [r for r in json.loads(keys(env, "list", "--json").stdout) if r["name"] == name]
    assert record["admin"] is False and record["revoked_at"] is None
    assert record["last_used_at"] is not None  # the request above

    duplicate = keys(env, "create", "--name", name)
    assert duplicate.returncode == 1 and duplicate.stdout == ""
    assert "exists already" in duplicate.stderr
    bad_name = keys(env, "create", "--name", "has space")
    assert bad_name.returncode == 1 and "invalid key name" in bad_name.stderr

    revoked = keys(env, "revoke", name)
    assert revoked.returncode == 0, revoked.stderr
    assert client.get("/searches", headers=headers).status_code == 401
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
