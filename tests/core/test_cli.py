"""The ``darts`` command end to end on tiny synthetic data: search, resume, train, datasets, bad input."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from darts_core.checkpoint import CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME
from darts_core.cli.main import app
from darts_core.data.registry import load_dataset
from darts_core.spec.genotype import Genotype
from darts_core.spec.training_spec import TrainingJobConfig
from darts_core.train.export import read_export_metadata
from darts_core.train.job import run_training_job
from darts_core.train.records import TrainingStopped
from darts_core.train.weights import load_trained

DATASET = {"name": "synthetic", "num_samples": 64, "channels": 1, "image_size": 6, "num_classes": 3}
SPEC = {
    "name": "tiny",
    "dataset": DATASET,
    "search_space": {
        "primitives": ["none", "max_pool_3x3", "skip_connect", "dil_conv_3x3"],
        "internal_nodes": 2,
    },
    "network": {"cells": 3, "init_channels": 4, "stem_multiplier": 1},
    "training": {"epochs": 2, "batch_size": 8},
}

runner = CliRunner()


def _write_spec(path: Path, spec: dict | str) -> Path:
    path.write_text(spec if isinstance(spec, str) else json.dumps(spec))
    return path


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_search_writes_every_output_then_train_retrains_the_genotype(tmp_path: Path) -> None:
    spec_file = _write_spec(tmp_path / "spec.json", SPEC)
    out = tmp_path / "run"

    result = runner.invoke(app, ["search", str(spec_file), "--out", str(out), "--device", "cpu"])

    assert result.exit_code == 0, result.output
    assert "epoch   2/2" in result.output and "best supernet valid accuracy" in result.output
    assert sorted(path.name for path in out.iterdir()) == sorted([
        CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME, "genotype.json", "genotype.txt", "metrics.jsonl",
        "spec.json",
    ])  # fmt: skip
    records = _metrics(out)
    assert [record["epoch"] for record in records] == [1, 2]
    assert set(records[0]) == {
        "epoch", "train_loss", "train_acc", "valid_loss", "valid_acc", "lr", "seconds", "genotype", "alphas",
        "skip_connections", "parameter_free_ops", "alpha_entropy", "hessian_eigenvalue", "cost", "method",
        "schedule",
    }  # fmt: skip
    genotype = Genotype.from_json((out / "genotype.json").read_text())
    assert Genotype.from_darts((out / "genotype.txt").read_text().strip()) == genotype
    assert genotype.to_json() == records[-1]["genotype"]
    filled = json.loads((out / "spec.json").read_text())
    assert filled["name"] == "tiny" and filled["dataset"] == DATASET
    assert filled["training"]["epochs"] == 2 and filled["training"]["weight_lr"] == 0.025
    assert filled["resources"] == {
        "device": "cpu", "precision": "auto", "compile": "off", "time_limit_seconds": None
    }

    # The directory now belongs to this spec: another one is refused and nothing is touched.
    before = (out / "metrics.jsonl").read_text()
    refused = runner.invoke(app, ["search", str(spec_file), "--out", str(out), "--epochs", "3"])
    assert refused.exit_code == 2
    assert "training.epochs (2 there, 3 now)" in " ".join(refused.output.split())
    assert (out / "metrics.jsonl").read_text() == before

    train_args = [
        "--epochs",
        "1",
        "--init-channels",
        "4",
        "--cells",
        "2",
        "--batch-size",
        "16",
        "--device",
        "cpu",
    ]
    trained = runner.invoke(
        app, ["train", str(out / "genotype.json"), "--dataset", json.dumps(DATASET), *train_args]
    )
    assert trained.exit_code == 0, trained.output
    assert "test accuracy" in trained.output
    report = json.loads((out / "train.json").read_text())
    assert 0.0 <= report["test_accuracy"] <= 1.0 and len(report["history"]) == 1
    assert report["genotype"] == genotype.to_json() and report["settings"]["cells"] == 2

    # The DARTS string form is accepted too, and --out chooses where train.json goes.
    elsewhere = tmp_path / "elsewhere"
    trained = runner.invoke(
        app,
        [
            "train",
            str(out / "genotype.txt"),
            "--dataset",
            json.dumps(DATASET),
            "--out",
            str(elsewhere),
            *train_args,
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert json.loads((elsewhere / "train.json").read_text())["genotype"] == genotype.to_json()


def test_interrupted_search_resumes_without_duplicating_metrics(tmp_path: Path) -> None:
    # Enough steps per epoch (256 samples -> ~100 search-train -> 12 steps) that the stop below lands in
    # epoch 2, well before it ends.
    spec = {**SPEC, "dataset": {**DATASET, "num_samples": 256}, "training": {"epochs": 3, "batch_size": 8}}
    spec_file = _write_spec(tmp_path / "spec.json", spec)
    out = tmp_path / "run"
    metrics = out / "metrics.jsonl"

    def press_ctrl_c_after_epoch_1() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if metrics.exists() and metrics.read_text().count("\n") >= 1:
                os.kill(os.getpid(), signal.SIGINT)  # handled by the CLI: stop after the current step
                return
            time.sleep(0.005)

    watcher = threading.Thread(target=press_ctrl_c_after_epoch_1, daemon=True)
    watcher.start()
    stopped = runner.invoke(app, ["search", str(spec_file), "--out", str(out), "--device", "cpu"])
    watcher.join()
    assert stopped.exit_code == 130, stopped.output
    assert "stopped after epoch 1/3" in stopped.output
    assert [record["epoch"] for record in _metrics(out)] == [1]

    resumed = runner.invoke(app, ["search", str(spec_file), "--out", str(out), "--device", "cpu"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming" in resumed.output and "epoch   1/3" not in resumed.output
    assert [record["epoch"] for record in _metrics(out)] == [1, 2, 3]

    # A metrics file that lost lines (a crash between the checkpoint and the write) is rebuilt from the
    # checkpoint's history when the command runs again.
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n" + '{"epoch": 2, "trunc')
    again = runner.invoke(app, ["search", str(spec_file), "--out", str(out), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert [record["epoch"] for record in _metrics(out)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object, got list"),
        (json.dumps({"training": {"epochs": 2}}), 'the spec needs a "dataset"'),
        (json.dumps({**SPEC, "training": {"epochs": 0}}), "training.epochs: Input should be greater than"),
        (json.dumps({**SPEC, "trainig": {}}), "trainig: is not a known field"),
        (json.dumps({**SPEC, "dataset": {"name": "mnist"}}), "unknown dataset 'mnist'"),
        (json.dumps({**SPEC, "training": {"batch_size": 100}}), "training.batch_size (100) is larger than"),
    ],
)
def test_bad_spec_files_exit_2_with_a_message(tmp_path: Path, content: str | None, message: str) -> None:
    spec_file = tmp_path / "spec.json"
    if content is not None:
        spec_file.write_text(content)
    result = runner.invoke(app, ["search", str(spec_file), "--out", str(tmp_path / "run")])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and message in " ".join(result.output.split())


def test_train_rejects_bad_genotypes_and_datasets(tmp_path: Path) -> None:
    bad = tmp_path / "genotype.json"
    bad.write_text(
        json.dumps({"normal": [["conv_9x9", 0], ["skip_connect", 1]], "reduce": [["skip_connect", 0]]})
    )
    result = runner.invoke(app, ["train", str(bad)])
    assert result.exit_code == 2 and "invalid genotype" in result.output

    good = tmp_path / "good.json"
    good.write_text(
        json.dumps(
            {
                "normal": [["skip_connect", 0], ["skip_connect", 1]],
                "reduce": [["max_pool_3x3", 0], ["skip_connect", 1]],
            }
        )
    )
    result = runner.invoke(app, ["train", str(good), "--dataset", "imagenet"])
    assert result.exit_code == 2 and "unknown dataset 'imagenet'" in result.output
    result = runner.invoke(app, ["train", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "does not exist" in result.output


TRAIN_SPEC = {
    "dataset": DATASET,
    "network": {"init_channels": 4, "cells": 2},
    "training": {"epochs": 2, "batch_size": 16, "valid_fraction": 0.25},
    "resources": {"device": "cpu"},
}


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{**record, "seconds": None} for record in history]


def test_train_with_a_spec_resumes_and_writes_loadable_weights(tmp_path: Path) -> None:
    genotype_file = tmp_path / "genotype.json"
    genotype = Genotype(
        normal=[("sep_conv_3x3", 0), ("skip_connect", 1)], reduce=[("max_pool_3x3", 0), ("skip_connect", 1)]
    )
    genotype_file.write_text(json.dumps(genotype.to_json()))
    spec_file = _write_spec(tmp_path / "train-spec.json", TRAIN_SPEC)

    # An option may repeat the spec but not contradict it.
    refused = runner.invoke(app, ["train", str(genotype_file), "--spec", str(spec_file), "--epochs", "3"])
    assert refused.exit_code == 2
    assert "--epochs 3 contradicts" in " ".join(refused.output.split())
    assert not (tmp_path / "train.json").exists()

    whole = tmp_path / "whole"
    result = runner.invoke(
        app,
        ["train", str(genotype_file), "--spec", str(spec_file), "--epochs", "2", "--out", str(whole)]
        + ["--export", "onnx"],
    )
    assert result.exit_code == 0, result.output
    assert "valid acc" in result.output and "multiply-adds" in result.output
    written = sorted(path.name for path in whole.iterdir())
    assert written == ["model.onnx", "model.safetensors", "train-checkpoint", "train.json"]
    exported = read_export_metadata(whole / "model.onnx")  # what the dataset says the images are
    assert exported["input_shape"] == [1, 6, 6] and len(exported["mean"]) == len(exported["std"]) == 1
    assert exported["class_names"] == ["0", "1", "2"] and exported["genotype"] == genotype.to_json()
    report = json.loads((whole / "train.json").read_text())
    assert report["spec"]["training"]["valid_fraction"] == 0.25 and report["settings"]["epochs"] == 2
    assert report["dataset"] == DATASET and len(report["history"]) == 2
    assert report["valid_accuracy"] == report["history"][-1]["valid_acc"] is not None
    assert report["multiply_adds"] > 0 and report["parameters"] > 0
    network = load_trained(whole / "model.safetensors")
    assert network.genotype == genotype
    assert sum(p.numel() for p in network.parameters()) == report["parameters"]

    # A training stopped after epoch 1 (as Ctrl-C stops it) resumes where it stopped, bit-identically.
    resumed_out, checkpoints = tmp_path / "resumed", tmp_path / "checkpoints"
    seen: list = []
    with pytest.raises(TrainingStopped):
        run_training_job(
            genotype, TrainingJobConfig.from_spec(TRAIN_SPEC), load_dataset(DATASET),
            checkpoint_dir=checkpoints, on_epoch=seen.append, should_stop=lambda: bool(seen),
        )  # fmt: skip
    arguments = ["train", str(genotype_file), "--spec", str(spec_file), "--out", str(resumed_out)]
    result = runner.invoke(app, [*arguments, "--checkpoint-dir", str(checkpoints)])
    assert result.exit_code == 0, result.output
    assert "resuming" in result.output and "epoch   1/2" not in result.output
    resumed = json.loads((resumed_out / "train.json").read_text())
    assert _without_seconds(resumed["history"]) == _without_seconds(report["history"])
    assert resumed["test_accuracy"] == report["test_accuracy"]

    # The checkpoint directory belongs to that training: another seed is refused.
    result = runner.invoke(app, [*arguments, "--checkpoint-dir", str(checkpoints), "--seed", "0"])
    assert result.exit_code == 0, result.output  # the spec's own seed: the same training
    other_spec = {**TRAIN_SPEC, "training": {**TRAIN_SPEC["training"], "seed": 4}}
    other = _write_spec(tmp_path / "other.json", other_spec)
    result = runner.invoke(
        app, ["train", str(genotype_file), "--spec", str(other), "--checkpoint-dir", str(checkpoints)]
    )
    assert result.exit_code == 2
    assert "training.seed (0 in the checkpoint, 4 now)" in " ".join(result.output.split())


def test_datasets_and_help() -> None:
    listed = runner.invoke(app, ["datasets"])
    assert listed.exit_code == 0 and "digits" in listed.output and "synthetic" in listed.output
    for command, options in (
        (["--help"], ["search", "train", "datasets"]),
        (["search", "--help"], ["--out", "--device", "--epochs", "SPEC.json"]),
        (["train", "--help"], ["--dataset", "--epochs", "--init-channels", "--cells", "--out", "GENOTYPE"]),
    ):
        result = runner.invoke(app, command)
        assert result.exit_code == 0
        for option in options:
            assert option in result.output


@pytest.mark.parametrize("command", [["submit"], ["trainings", "submit"], ["studies", "submit"]])
@pytest.mark.parametrize(("content", "says"), [("[1, 2]", "must hold a JSON object"), ("{oops", "spec file")])
def test_remote_submit_refuses_a_spec_file_that_is_not_a_json_object_before_any_request(
    tmp_path: Path, command: list[str], content: str, says: str
) -> None:
    """`darts submit`, `darts trainings submit` and `darts studies submit` read the file alike
    (`darts_core.client.searches.read_spec_file`): exit 2 naming the file, with no server to reach."""
    from typer.testing import CliRunner

    from darts_core.cli.main import app

    spec = tmp_path / "spec.json"
    spec.write_text(content)
    arguments = [*command, str(spec), "--url", "http://127.0.0.1:9", "--token", "x"]
    result = CliRunner().invoke(app, arguments, env={"DARTS_CONFIG_DIR": str(tmp_path / "config")})
    assert result.exit_code == 2, (arguments, result.output)
    assert str(spec) in result.output and says in result.output


def test_export_writes_a_weights_file_as_onnx_or_torchscript(tmp_path: Path) -> None:
    import torch

    from darts_core.nn.genotype_network import GenotypeNetwork
    from darts_core.spec.genotype import DARTS_V2
    from darts_core.train.weights import save_trained

    torch.manual_seed(0)
    network = GenotypeNetwork(DARTS_V2, 1, 3, init_channels=4, cells=2).eval()
    weights = tmp_path / "model.safetensors"
    save_trained(network, weights, input_shape=(1, 6, 6), class_names=["a", "b", "c"])
    result = runner.invoke(app, ["export", str(weights)])
    assert result.exit_code == 0, result.output
    assert read_export_metadata(tmp_path / "model.onnx")["class_names"] == ["a", "b", "c"]
    out = tmp_path / "elsewhere.pt"
    result = runner.invoke(app, ["export", str(weights), "--format", "torchscript", "-o", str(out)])
    assert result.exit_code == 0, result.output
    scripted = torch.jit.load(str(out))
    batch = torch.randn(2, 1, 6, 6)
    torch.testing.assert_close(scripted(batch), network(batch), atol=1e-5, rtol=0)

    # Bad input: exit 2, one message naming what is wrong, nothing written.
    bare = tmp_path / "bare" / "model.safetensors"
    bare.parent.mkdir()
    save_trained(network, bare)
    refused = runner.invoke(app, ["export", str(bare)])
    assert refused.exit_code == 2 and "input_shape" in refused.output
    refused = runner.invoke(app, ["export", str(bare), "--input-shape", "1,6"])
    assert refused.exit_code == 2 and "--input-shape must be C,H,W" in " ".join(refused.output.split())
    refused = runner.invoke(app, ["export", str(tmp_path / "missing.safetensors")])
    assert refused.exit_code == 2 and "does not exist" in refused.output
    assert sorted(path.name for path in bare.parent.iterdir()) == ["model.safetensors"]
    result = runner.invoke(app, ["export", str(bare), "--input-shape", "1,6,6"])
    assert result.exit_code == 0, result.output
    assert read_export_metadata(bare.parent / "model.onnx")["input_shape"] == [1, 6, 6]
