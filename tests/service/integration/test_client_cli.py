"""The `darts` client commands against a real running app (uvicorn) and Celery worker.

Commands run through typer's runner with the environment a user would have, the login in a config
directory of the test's own (DARTS_CONFIG_DIR); `darts watch` runs as a real subprocess
(`python -m darts_core.cli.main`) and follows a search through a proxy that cuts every connection after the
first epoch: the client reconnects with Last-Event-ID and prints every epoch exactly once.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.settings import Settings
from darts_core.client.http import DartsClient, ServiceError, load_login, split_login_url
from darts_core.spec.genotype import Genotype

from .conftest import REPO_ROOT, WorkerProcess, tiny_spec, wait_until
from .live_server import CuttingProxy, LiveServer, client_key

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def live(
    stack_settings: Settings, worker: WorkerProcess, request: pytest.FixtureRequest
) -> Iterator[LiveServer]:
    worker.ensure_running()
    server = LiveServer(stack_settings, client_key(request, "cli")).start()
    yield server
    server.stop()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environment = {**os.environ, "DARTS_CONFIG_DIR": str(tmp_path / "config"), "COLUMNS": "200"}
    environment.pop("DARTS_URL", None)
    environment.pop("DARTS_TOKEN", None)
    return environment


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def darts(env: dict[str, str], *args: str, check: int | None = 0, input: str | None = None) -> Run:
    """`darts ARGS` in this process (typer's runner: the same code as the console script, without
    paying torch's import again); `watch` below runs as a real subprocess."""
    from typer.testing import CliRunner

    from darts_core.cli.main import app

    # The live server in this process configured logging (app.logging_config); a real `darts` process
    # has no handler for httpx's request log, so keep it out of the output here too.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = CliRunner().invoke(app, list(args), env=env, input=input, catch_exceptions=False)
    run = Run(result.exit_code, result.stdout, result.stderr)
    if check is not None:
        assert run.returncode == check, f"darts {' '.join(args)} -> {run.returncode}\n{run.stderr}"
    return run


def one_error_line(result: Run) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines
    return lines[0]


def test_login_url_splits_into_server_and_key() -> None:
    assert split_login_url("http://127.0.0.1:8000/?token=abc") == ("http://127.0.0.1:8000", "abc")
    assert split_login_url("https://darts.example.org/api/") == ("https://darts.example.org/api", None)
    with pytest.raises(ValueError, match="url must look like"):
        split_login_url("darts.example.org")


def test_login_then_submit_list_status_genotype_and_upload(
    live: LiveServer, env: dict[str, str], tmp_path: Path
) -> None:
    # Not logged in: exit 2 with what to do.
    assert "darts login URL" in one_error_line(darts(env, "list", check=2))

    # The key asked for when not given; then the URL `darts-service up` prints, as it is.
    darts(env, "login", live.url, input=f"{live.key}\n")
    assert json.loads((tmp_path / "config" / "login.json").read_text())["token"] == live.key
    darts(env, "login", f"{live.url}/?token={live.key}")
    stored = json.loads((tmp_path / "config" / "login.json").read_text())
    assert stored == {"url": live.url, "token": live.key}
    assert (tmp_path / "config" / "login.json").stat().st_mode & 0o777 == 0o600

    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec(epochs=2, name="from the cli")))
    submitted = json.loads(darts(env, "submit", str(spec_file), "--json").stdout)
    search_id = submitted["id"]
    assert submitted["name"] == "from the cli" and submitted["status"] in ("queued", "running")

    # `--watch` on a second one follows it to the end (exit 0 when it succeeds).
    watched = darts(env, "submit", str(spec_file), "--watch")
    assert "succeeded" in watched.stdout and "Genotype(normal=" in watched.stdout

    with DartsClient(live.url, live.key) as client:
        wait_until(lambda: client.get_search(search_id)["status"] == "succeeded", 180, "the cli's search")
        genotype = client.genotype(search_id)

    listed = json.loads(darts(env, "list", "--json").stdout)
    assert search_id in [item["id"] for item in listed["items"]]
    assert "from the cli" in darts(env, "list", "--status", "succeeded").stdout
    status = json.loads(darts(env, "status", search_id, "--json").stdout)
    assert status["status"] == "succeeded" and status["epoch"] == 2
    assert "succeeded" in darts(env, "status", search_id).stdout

    assert json.loads(darts(env, "genotype", search_id).stdout) == genotype
    darts_text = darts(env, "genotype", search_id, "--format", "darts").stdout.strip()
    assert darts_text == Genotype.from_json(genotype).to_darts()
    darts(env, "genotype", search_id, "--format", "svg", "-o", str(tmp_path / "cells.svg"))
    assert (tmp_path / "cells.svg").read_text().startswith("<svg")
    darts(env, "genotype", search_id, "--epoch", "1", "-o", str(tmp_path / "first.json"))
    assert Genotype.from_json(json.loads((tmp_path / "first.json").read_text()))

    # Upload (raw, streamed) and the server's datasets next to the built-in list.
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((16, 1, 8, 8), dtype=np.uint8), y=np.arange(16) % 2)
    (tmp_path / "zeros.npz").write_bytes(buffer.getvalue())
    uploaded = json.loads(
        darts(env, "upload", str(tmp_path / "zeros.npz"), "--name", "zeros", "--json").stdout
    )
    assert uploaded["name"] == "zeros" and uploaded["num_samples"] == 16
    listing = json.loads(darts(env, "datasets", "--json").stdout)
    assert {item["name"] for item in listing["builtin"]} >= {"digits", "synthetic"}
    assert uploaded["id"] in [item["id"] for item in listing["server"]]
    table = darts(env, "datasets").stdout
    assert f"datasets on {live.url}" in table and "zeros" in table


def test_upload_a_folder_packed_on_the_fly_and_an_archive(
    live: LiveServer, env: dict[str, str], tmp_path: Path
) -> None:
    """`darts upload DIR` streams a tar made as it is read (no temporary file); `darts upload ARCHIVE`
    sends the file; `darts datasets` names the classes."""
    from PIL import Image

    folder = tmp_path / "pets"
    for label, colour in (("cat", 30), ("dog", 200)):
        (folder / label).mkdir(parents=True)
        for index in range(3):
            Image.new("L", (6, 6), color=colour + index).save(folder / label / f"{index}.png")
    (folder / ".DS_Store").write_bytes(b"x")
    (folder / "cat" / "link.png").symlink_to(folder / "cat" / "0.png")
    darts(env, "login", f"{live.url}/?token={live.key}")

    packed = darts(env, "upload", str(folder))
    assert "classes: cat 3, dog 3" in packed.stdout and "left out 1 links" in packed.stderr
    shutil.make_archive(str(tmp_path / "pets-archive"), "gztar", root_dir=tmp_path, base_dir="pets")
    with_link = darts(env, "upload", str(tmp_path / "pets-archive.tar.gz"), check=None)
    assert with_link.returncode != 0 and "'pets/cat/link.png': symbolic link" in with_link.stderr
    (folder / "cat" / "link.png").unlink()
    before = {path.name for path in tmp_path.iterdir()}
    shutil.make_archive(str(tmp_path / "pets-archive"), "gztar", root_dir=tmp_path, base_dir="pets")
    sent = json.loads(
        darts(env, "upload", str(tmp_path / "pets-archive.tar.gz"), "--image-size", "4", "--json").stdout
    )
    assert sent["class_names"] == ["cat", "dog"] and (sent["channels"], sent["height"]) == (1, 4)
    assert {path.name for path in tmp_path.iterdir()} == before  # the client wrote no file
    listing = json.loads(darts(env, "datasets", "--json").stdout)
    assert [item["class_names"] for item in listing["server"] if item["id"] == sent["id"]] == [["cat", "dog"]]
    assert "cat, dog" in darts(env, "datasets").stdout
    refused = darts(env, "upload", str(tmp_path / "pets-archive.tar.gz"), "--channels", "2", check=None)
    assert refused.returncode != 0 and "--channels" in refused.stderr


#: A `darts` process in which `import torch` fails: a remote command that needed torch exits non-zero.
_DARTS_WITHOUT_TORCH = (
    "import sys; sys.modules['torch'] = None; "
    "from darts_core.cli.main import main; sys.argv[0] = 'darts'; main()"
)


def darts_without_torch(env: dict[str, str], *args: str) -> Run:
    """`darts ARGS` as a real process that cannot import torch; asserts it succeeded."""
    result = subprocess.run(
        [sys.executable, "-c", _DARTS_WITHOUT_TORCH, *args],
        env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, f"darts {' '.join(args)} -> {result.returncode}\n{result.stderr}"
    return Run(result.returncode, result.stdout, result.stderr)


def test_the_remote_commands_run_without_torch(live: LiveServer, env: dict[str, str]) -> None:
    with DartsClient(live.url, live.key) as client:
        search_id = client.submit(tiny_spec(epochs=1, name="no torch"))["id"]
        wait_until(lambda: client.get_search(search_id)["status"] == "succeeded", 180, "the search")
    login = ("--url", live.url, "--token", live.key)
    assert "Usage" in darts_without_torch(env, "--help").stdout
    listed = json.loads(darts_without_torch(env, "list", "--json", *login).stdout)
    assert search_id in [item["id"] for item in listed["items"]]
    assert json.loads(darts_without_torch(env, "status", search_id, "--json", *login).stdout)["epoch"] == 1
    watched = darts_without_torch(env, "watch", search_id, "--json", *login).stdout.splitlines()
    assert json.loads(watched[-1])["data"]["status"] == "succeeded"
    assert Genotype.from_json(json.loads(darts_without_torch(env, "genotype", search_id, *login).stdout))
    assert json.loads(darts_without_torch(env, "datasets", "--json", *login).stdout)["server"]
    darts_without_torch(env, "trainings", "list", "--json", *login)
    darts_without_torch(env, "studies", "list", "--json", *login)


def test_cancel_and_server_errors_are_one_line_and_non_zero(live: LiveServer, env: dict[str, str]) -> None:
    env = env | {"DARTS_URL": live.url, "DARTS_TOKEN": live.key}  # no stored login: the environment is enough
    with DartsClient(live.url, live.key) as client:
        search_id = client.submit(tiny_spec(epochs=300, name="cancel me"))["id"]
    assert "cancel" in darts(env, "cancel", search_id).stdout
    with DartsClient(live.url, live.key) as client:
        wait_until(lambda: client.get_search(search_id)["status"] == "cancelled", 120, "the cancel")
    assert "cancelled" in darts(env, "cancel", search_id).stdout  # idempotent

    assert "HTTP 404" in one_error_line(darts(env, "status", "no-such-search", check=1))
    bad_spec = REPO_ROOT / "out" / "bad-spec.json"
    bad_spec.parent.mkdir(exist_ok=True)
    bad_spec.write_text(json.dumps(tiny_spec(epochs=0)))
    line = one_error_line(darts(env, "submit", str(bad_spec), check=1))
    assert "HTTP 422" in line and "training.epochs" in line
    assert "cannot reach" in one_error_line(darts(env, "list", "--url", "http://127.0.0.1:9", check=1))
    assert "--format" in one_error_line(darts(env, "genotype", search_id, "--format", "png", check=2))


def test_watch_resumes_with_last_event_id_when_the_stream_is_cut(
    live: LiveServer, env: dict[str, str]
) -> None:
    proxy = CuttingProxy(live.port)
    try:
        with DartsClient(live.url, live.key) as client:
            # Epochs of 16 steps: still running well after the first epoch event, when the cut comes (with
            # 4 steps the last four epochs and the end could all reach the client before the cut).
            search_id = client.submit(tiny_spec(epochs=5, samples=1024, name="watched"))["id"]
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "darts_core.cli.main",
                "watch",
                search_id,
                "--json",
                "--url",
                proxy.url,
                "--token",
                live.key,
            ],
            env=env,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: lines.extend(json.loads(line) for line in process.stdout))
        reader.start()
        wait_until(lambda: any(line["event"] == "epoch" for line in lines), 180, "the first epoch event")
        cut_after = max(line["data"]["epoch"] for line in lines if line["event"] == "epoch")
        assert proxy.cut() >= 2
        assert process.wait(timeout=300) == 0, process.stderr.read()
        reader.join(timeout=30)
        stderr = process.stderr.read()
    finally:
        proxy.close()

    epochs = [line["data"]["epoch"] for line in lines if line["event"] == "epoch"]
    assert epochs == [1, 2, 3, 4, 5], epochs  # each once, in order, across the cut
    assert lines[-1] == {
        "event": "status",
        "id": lines[-1]["id"],
        "data": {"status": "succeeded", "error": None},
    }
    assert "reconnecting" in stderr
    event_requests = [
        r for r in proxy.requests if r.startswith(b"GET ") and b"/events" in r.split(b"\r\n", 1)[0]
    ]
    assert len(event_requests) >= 2
    resumed = event_requests[1].decode("latin-1").lower()
    # Resumed after the last epoch the first connection delivered: its stream entry id goes back as
    # Last-Event-ID. That is the epoch seen when the cut was asked for, or a later one that arrived
    # before the cut took effect; either way each epoch came once across the cut (asserted above).
    ids_at_or_after_cut = {
        line["id"].lower()
        for line in lines
        if line["event"] == "epoch" and line["data"]["epoch"] >= cut_after
    }
    header = next(h for h in resumed.split("\r\n") if h.startswith("last-event-id: "))
    assert header.removeprefix("last-event-id: ") in ids_at_or_after_cut, (header, ids_at_or_after_cut)
    assert f"authorization: bearer {live.key}".lower() in resumed


def test_overrides_and_follow_give_up_on_a_dead_server(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DARTS_CONFIG_DIR", env["DARTS_CONFIG_DIR"])
    assert load_login() is None
    assert load_login("http://127.0.0.1:1/?token=k") == load_login("http://127.0.0.1:1", "k")
    with (
        DartsClient("http://127.0.0.1:9", "k") as client,
        pytest.raises(ServiceError, match="could not be resumed"),
    ):
        list(client.follow("x", reconnect_for=0.5))


def test_trainings_submit_watch_list_status_weights_and_cancel(
    live: LiveServer, env: dict[str, str], tmp_path: Path
) -> None:
    from darts_core import load_trained
    from darts_core.spec.genotype import DARTS_V2

    env = env | {"DARTS_URL": live.url, "DARTS_TOKEN": live.key}
    spec = {
        "name": "cli training",
        "genotype": DARTS_V2.to_json(),
        "dataset": tiny_spec()["dataset"],
        "network": {"init_channels": 4, "cells": 2},
        "training": {"epochs": 2, "batch_size": 16},
        "resources": {"device": "cpu"},
    }
    spec_file = tmp_path / "training.json"
    spec_file.write_text(json.dumps(spec))
    watched = darts(env, "trainings", "submit", str(spec_file), "--watch")
    assert "submitted" in watched.stdout and "succeeded" in watched.stdout
    listed = json.loads(darts(env, "trainings", "list", "--json").stdout)["items"]
    training = next(item for item in listed if item["name"] == "cli training")
    status = json.loads(darts(env, "trainings", "status", training["id"], "--json").stdout)
    assert status["status"] == "succeeded" and status["epoch"] == 2 and status["test_accuracy"] is not None
    assert "succeeded" in darts(env, "trainings", "status", training["id"]).stdout

    weights = tmp_path / "cli.safetensors"
    darts(env, "trainings", "weights", training["id"], "-o", str(weights))
    network = load_trained(weights)
    assert sum(p.numel() for p in network.parameters()) >= status["parameters"]
    _check_exports(env, training["id"], network, tmp_path)

    # The genotype source from options; bad input is one line naming the field.
    line = one_error_line(darts(env, "trainings", "submit", "--dataset", "digits", check=1))
    assert "HTTP 422" in line and "genotype" in line
    long_one = json.loads(
        darts(env, "trainings", "submit", str(spec_file), "--epochs", "500", "--json").stdout
    )
    assert long_one["epochs"] == 500
    assert "cancel" in darts(env, "trainings", "cancel", long_one["id"]).stdout
    with DartsClient(live.url, live.key) as client:
        wait_until(lambda: client.get_training(long_one["id"])["status"] == "cancelled", 120, "the cancel")


def _check_exports(env: dict[str, str], training_id: str, network: Any, tmp_path: Path) -> None:
    """`darts trainings export` in both formats: files that give the trained network's logits and carry
    the dataset's input shape and normalisation (the worker records them in the weights)."""
    import onnxruntime
    import torch

    from darts_core.data.registry import load_dataset
    from darts_core.train.export import read_export_metadata

    dataset = load_dataset(tiny_spec()["dataset"])
    batch = dataset.x_test[:7]
    with torch.no_grad():
        expected = network.eval()(batch)  # logits only: eval mode has no auxiliary head
    onnx_file, script_file = tmp_path / "cli.onnx", tmp_path / "cli.pt"
    assert "wrote" in darts(env, "trainings", "export", training_id, "-o", str(onnx_file)).stderr
    darts(env, "trainings", "export", training_id, "--format", "torchscript", "-o", str(script_file))
    for path in (onnx_file, script_file):
        meta = read_export_metadata(path)
        assert meta["input_shape"] == [dataset.in_channels, *dataset.image_size], path
        assert meta["mean"] == pytest.approx(list(dataset.channel_mean)), path
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    (onnx_logits,) = session.run(None, {"input": batch.numpy()})
    assert np.abs(onnx_logits - expected.numpy()).max() <= 1e-4
    scripted = torch.jit.load(str(script_file))
    torch.testing.assert_close(scripted(batch), expected, atol=1e-4, rtol=0)
