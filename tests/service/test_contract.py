"""The OpenAPI contract, checked by Schemathesis (`--checks all`) against a live API.

The run uses the repository's `schemathesis.toml` (the same settings `st run` reads from a checkout),
so this test and a manual `st run <url>/openapi.json --checks all -H "Authorization: Bearer KEY"` give
the same verdict. Every search and training the run creates is cancelled afterwards.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from sqlalchemy.orm import Session

from app.models import Search, Training
from app.settings import Settings

# Runs once (the PostgreSQL pass deselects it): the contract is the same on both backends.
pytestmark = pytest.mark.once

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_no_failure(
    serve, api_settings: Settings, auth_headers: dict[str, str], db_session: Session
) -> None:
    assert (REPO_ROOT / "schemathesis.toml").is_file()
    server = serve(api_settings)
    command = [
        str(Path(sys.executable).with_name("st")), "run", f"{server.url}/openapi.json", "--checks", "all",
        "--no-color",
    ]
    for name, value in auth_headers.items():
        command += ["-H", f"{name}: {value}"]
    try:
        completed = subprocess.run(
            command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    finally:
        # Cancel what the run created: nothing it queued may linger for a worker to pick up.
        with httpx.Client(base_url=server.url, headers=auth_headers, timeout=60) as http:
            for search in db_session.query(Search).all():
                if search.status in ("queued", "running"):
                    assert http.post(f"/searches/{search.id}/cancel").status_code == 202
            for training in db_session.query(Training).all():
                if training.status in ("queued", "running"):
                    assert http.post(f"/trainings/{training.id}/cancel").status_code == 202
    output = completed.stdout + completed.stderr
    summary = [line.strip() for line in output.splitlines() if re.search(r"generated|failures?|passed", line)]
    print("schemathesis:", " | ".join(summary[-3:]))
    assert completed.returncode == 0, output[-20000:]
    db_session.expire_all()
    assert all(search.status not in ("queued", "running") for search in db_session.query(Search).all())
    assert all(job.status not in ("queued", "running") for job in db_session.query(Training).all())
