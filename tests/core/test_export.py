"""darts_core.train.export: ONNX and TorchScript files that run without darts_core (issue 23)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
import torch

import darts_core
from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.nn.search_network import SearchNetwork
from darts_core.search.derive import derive_genotype
from darts_core.spec.artifacts import EXPORT_FILES
from darts_core.spec.genotype import DARTS_V2, Genotype
from darts_core.train.export import (
    EXPORT_FORMAT,
    ONNX_OPSET,
    TORCHSCRIPT_METADATA_FILE,
    export_onnx,
    export_torchscript,
    export_trained,
    read_export_metadata,
)
from darts_core.train.weights import read_trained_data

SHAPE = (3, 12, 12)
MEAN, STD = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
CLASSES = ["cat", "dog", "eel", "fox", "gnu"]


def _searched_genotype() -> Genotype:
    """What a search derives from (random) architecture weights: any mix of the eight operations."""
    generator = torch.Generator().manual_seed(3)
    edges = 14
    return derive_genotype(
        torch.randn(edges, 8, generator=generator),
        torch.randn(edges, 8, generator=generator),
        list(darts_core.DARTS_OP_NAMES),
    )


def _trained(genotype: Genotype) -> GenotypeNetwork:
    """A small network whose weights and BN statistics are not the initial ones, auxiliary head and
    drop-path on (the export must leave both out)."""
    torch.manual_seed(0)
    network = GenotypeNetwork(genotype, 3, 5, init_channels=6, cells=5, auxiliary=True, drop_path_prob=0.3)
    network.train()
    with torch.no_grad():
        network(torch.randn(16, *SHAPE))  # moves the BN running statistics
        for parameter in network.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    return network.eval()


#: FairDARTS's threshold derivation: nodes that keep 0, 1 and 2 inputs, a dropped one as ("none", j).
DROPPED_INPUTS = Genotype(
    normal=(("none", 1), ("none", 0), ("sep_conv_3x3", 0), ("none", 2), ("skip_connect", 3),
            ("dil_conv_3x3", 1), ("none", 4), ("max_pool_3x3", 0)),
    reduce=(("none", 0), ("none", 1), ("avg_pool_3x3", 1), ("none", 2), ("none", 3), ("sep_conv_5x5", 0),
            ("skip_connect", 2), ("dil_conv_5x5", 4)),
)  # fmt: skip
GENOTYPES = {"darts_v2": DARTS_V2, "searched": _searched_genotype(), "dropped_inputs": DROPPED_INPUTS}


@pytest.fixture(scope="module", params=sorted(GENOTYPES))
def network(request: pytest.FixtureRequest) -> GenotypeNetwork:
    return _trained(GENOTYPES[request.param])


def _reference(network: GenotypeNetwork, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return network(x).numpy()


def test_the_searched_genotype_differs_from_darts_v2() -> None:
    assert GENOTYPES["searched"] != DARTS_V2


def test_onnx_matches_torch_on_batches_of_1_and_7(network: GenotypeNetwork, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    darts_core.export_onnx(network, path, input_shape=SHAPE, class_names=CLASSES, mean=MEAN, std=STD)
    assert [item.name for item in tmp_path.iterdir()] == ["model.onnx"]  # no temporary left
    assert network.training is False and network.auxiliary_head is not None  # the network is untouched
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")) >= 17
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == list(SHAPE)
    assert [output.name for output in model.graph.output] == ["logits"]  # no auxiliary output
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 7):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(batch))
        (out,) = session.run(None, {"input": x.numpy()})
        assert out.shape == (batch, 5)
        np.testing.assert_allclose(out, _reference(network, x), atol=1e-4, rtol=0)


def test_onnx_metadata_round_trips(network: GenotypeNetwork, tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    written = export_onnx(network, path, input_shape=SHAPE, class_names=CLASSES, mean=MEAN, std=STD)
    props = {entry.key: entry.value for entry in onnx.load(str(path)).metadata_props}
    assert props == written
    meta = read_export_metadata(path)
    assert meta["format"] == EXPORT_FORMAT and meta["format_version"] == 1
    assert meta["input_shape"] == list(SHAPE)
    assert meta["class_names"] == CLASSES
    assert meta["mean"] == pytest.approx(MEAN) and meta["std"] == pytest.approx(STD)
    assert Genotype.from_json(meta["genotype"]) == network.genotype
    assert Genotype.from_darts(meta["genotype_darts"]) == network.genotype
    assert meta["network"] == {"in_channels": 3, "num_classes": 5, "init_channels": 6, "cells": 5}
    assert meta["input_name"] == "input" and meta["output_name"] == "logits"


def test_unknown_names_and_normalisation(tmp_path: Path) -> None:
    network = _trained(DARTS_V2)
    meta = export_onnx(network, tmp_path / "m.onnx", input_shape=SHAPE)
    assert json.loads(meta["class_names"]) == ["0", "1", "2", "3", "4"]
    assert json.loads(meta["mean"]) is None and json.loads(meta["std"]) is None
    assert ONNX_OPSET >= 17


_ISOLATED = textwrap.dedent(
    """
    import json, sys
    sys.path.append(sys.argv[4])  # torch's site-packages, without its .pth files (darts_core's editable hook)
    try:
        import darts_core
    except ImportError:
        pass
    else:
        raise SystemExit("darts_core is importable here")
    import torch
    files = {"darts_core.json": ""}
    model = torch.jit.load(sys.argv[1], _extra_files=files)
    meta = json.loads(files["darts_core.json"])
    x = torch.load(sys.argv[2])
    with torch.no_grad():
        torch.save(model(x), sys.argv[3])
    print(json.dumps(meta))
    """
)


_TORCH_SITE = str(Path(torch.__file__).resolve().parent.parent)


def test_torchscript_runs_without_darts_core(network: GenotypeNetwork, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    written = darts_core.export_torchscript(
        network, path, input_shape=SHAPE, class_names=CLASSES, mean=MEAN, std=STD
    )
    assert read_export_metadata(path)["class_names"] == CLASSES
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = elsewhere / "run.py"
    script.write_text(_ISOLATED)
    for batch in (1, 7):
        x = torch.randn(batch, *SHAPE, generator=torch.Generator().manual_seed(10 + batch))
        torch.save(x, elsewhere / "x.pt")
        # -I: no PYTHONPATH, user site or cwd on sys.path; -S: no site-packages, so none of its .pth files
        # (the editable install's hook); the script adds torch's directory alone and checks darts_core fails.
        result = subprocess.run(
            [sys.executable, "-I", "-S", str(script), str(path), "x.pt", "y.pt", _TORCH_SITE],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            timeout=300,
            env={"PYTHONPATH": "", "PATH": "/usr/bin:/bin"},
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.strip().splitlines()[-1]) == written
        out = torch.load(elsewhere / "y.pt")
        np.testing.assert_allclose(out.numpy(), _reference(network, x), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"input_shape": (3, 12)}, "input_shape"),
        ({"input_shape": (1, 12, 12)}, "input_shape"),
        ({"input_shape": (3, 0, 12)}, "input_shape"),
        ({"input_shape": (3, 12.0, 12)}, "input_shape"),
        ({"input_shape": "3x12x12"}, "input_shape"),
        ({"input_shape": SHAPE, "class_names": ["a"]}, "class_names"),
        ({"input_shape": SHAPE, "class_names": "abcde"}, "class_names"),
        ({"input_shape": SHAPE, "mean": (0.1, 0.2), "std": STD}, "mean"),
        ({"input_shape": SHAPE, "mean": MEAN, "std": (1.0, 0.0, 1.0)}, "std"),
        ({"input_shape": SHAPE, "mean": MEAN}, "std"),
        ({"input_shape": SHAPE, "mean": (float("nan"), 0.0, 0.0), "std": STD}, "mean"),
    ],
)
@pytest.mark.parametrize("export", [export_onnx, export_torchscript])
def test_bad_arguments_are_refused(
    export: object, kwargs: dict[str, object], argument: str, tmp_path: Path
) -> None:
    network = _trained(DARTS_V2)
    with pytest.raises(ValueError, match=argument):
        export(network, tmp_path / "model", **kwargs)  # type: ignore[operator]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("export", [export_onnx, export_torchscript])
def test_only_a_genotype_network_is_exported(export: object, tmp_path: Path) -> None:
    for other in (torch.nn.Conv2d(3, 5, 1), SearchNetwork(3, 5, 4, 3)):
        with pytest.raises(ValueError, match="network must be a GenotypeNetwork"):
            export(other, tmp_path / "model", input_shape=SHAPE)  # type: ignore[operator]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_a_foreign_file_is_not_read_as_an_export(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00not onnx")
    with pytest.raises(ValueError, match="garbage.onnx"):
        read_export_metadata(garbage)
    plain = tmp_path / "plain.pt"
    torch.jit.save(torch.jit.trace(torch.nn.Conv2d(3, 5, 1), torch.zeros(1, 3, 4, 4)), str(plain))
    with pytest.raises(ValueError, match="not a darts_core export"):
        read_export_metadata(plain)
    assert TORCHSCRIPT_METADATA_FILE == "darts_core.json"


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
def test_export_from_a_weights_file_takes_what_it_records(format: str, tmp_path: Path) -> None:
    network = _trained(DARTS_V2)
    weights = tmp_path / "model.safetensors"
    darts_core.save_trained(network, weights, input_shape=SHAPE, class_names=CLASSES, mean=MEAN, std=STD)
    assert read_trained_data(weights) == {
        "input_shape": list(SHAPE),
        "class_names": CLASSES,
        "mean": list(MEAN),
        "std": list(STD),
    }
    path = tmp_path / EXPORT_FILES[format]
    export_trained(weights, path, format=format)
    meta = read_export_metadata(path)
    assert (meta["input_shape"], meta["class_names"], meta["mean"]) == (list(SHAPE), CLASSES, list(MEAN))


def test_export_from_an_older_weights_file_needs_the_input_shape(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    darts_core.save_trained(_trained(DARTS_V2), weights)  # no data: as files written before issue 23
    assert read_trained_data(weights) == {}
    with pytest.raises(ValueError, match="input_shape"):
        export_trained(weights, tmp_path / "model.onnx", format="onnx")
    export_trained(weights, tmp_path / "model.onnx", format="onnx", input_shape=SHAPE)
    assert read_export_metadata(tmp_path / "model.onnx")["mean"] is None
    with pytest.raises(ValueError, match="format"):
        export_trained(weights, tmp_path / "model.x", format="tflite")


def test_save_trained_checks_the_data_it_records(tmp_path: Path) -> None:
    network = _trained(DARTS_V2)
    with pytest.raises(ValueError, match="input_shape"):
        darts_core.save_trained(network, tmp_path / "a.safetensors", input_shape=(1, 12, 12))
    with pytest.raises(ValueError, match="input_shape"):
        darts_core.save_trained(network, tmp_path / "a.safetensors", mean=MEAN, std=STD)
    assert list(tmp_path.iterdir()) == []
