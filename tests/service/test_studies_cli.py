"""`darts studies submit|list|status|cancel|watch` against a live API (no worker: the searches wait in
the queue, which is all these commands need to show)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app.settings import Settings
from darts_core.cli.main import app

STUDY = {
    "name": "cli study",
    "search": {"dataset": {"name": "digits"}, "training": {"epochs": 2}},
    "seeds": [3, 4],
    "selection": {"training": {"epochs": 1}},
}


@pytest.fixture
def env(serve, api_settings: Settings, auth_headers: dict[str, str], tmp_path: Path) -> dict[str, str]:
    server = serve(api_settings)
    token = auth_headers["Authorization"].removeprefix("Bearer ")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return {**os.environ, "DARTS_CONFIG_DIR": str(tmp_path / "config"), "DARTS_URL": server.url,
            "DARTS_TOKEN": token, "COLUMNS": "200"}


def darts(env: dict[str, str], *args: str, code: int = 0) -> str:
    result = CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)
    assert result.exit_code == code, (args, result.stdout, result.stderr)
    return result.stdout


def test_submit_list_status_cancel_and_watch_a_study(env: dict[str, str], tmp_path: Path) -> None:
    spec = tmp_path / "study.json"
    spec.write_text(json.dumps(STUDY))
    study = json.loads(darts(env, "studies", "submit", str(spec), "--json"))
    assert (study["name"], study["status"], study["stage"]) == ("cli study", "queued", "searching")
    assert "submitted study" in darts(env, "studies", "submit", str(spec))

    listed = json.loads(darts(env, "studies", "list", "--json"))["items"]
    assert len(listed) == 2 and study["id"] in {item["id"] for item in listed}
    assert study["id"] in darts(env, "studies", "list")

    shown = darts(env, "studies", "status", study["id"])
    assert "cli study" in shown and "searching" in shown and "comparison" in shown
    assert all(child["id"] in shown for child in study["stages"]["search"])

    assert darts(env, "studies", "cancel", study["id"]).strip() == f"{study['id']}: cancelled"
    # A cancelled study: the stream ends at once, and watch exits 1 (it did not succeed).
    watched = darts(env, "studies", "watch", study["id"], code=1)
    assert "study cancelled, stage done" in watched
    lines = darts(env, "studies", "watch", study["id"], "--json", code=1).splitlines()
    last = json.loads(lines[-1])
    assert (last["event"], last["data"]["status"]) == ("study", "cancelled")

    missing = CliRunner().invoke(app, ["studies", "status", "no-such-study"], env=env)
    assert missing.exit_code == 1 and "HTTP 404" in missing.stderr
