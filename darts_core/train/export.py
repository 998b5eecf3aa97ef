"""Models people can ship: a trained GenotypeNetwork as an ONNX file or a TorchScript file.

Both files run without darts_core (onnxruntime, or plain ``torch.jit.load``) and carry what a user needs
to feed them, as text (JSON values) under the same keys: ONNX ``metadata_props``, and in TorchScript the
extra file ``darts_core.json`` (``torch.jit.load(path, _extra_files={"darts_core.json": ""})``)::

    format           "darts_core.export"
    format_version   "1"
    input_name       "input": float32 N x C x H x W, N free (a dynamic batch axis)
    output_name      "logits": float32 N x num_classes (no softmax)
    input_shape      [C, H, W] the network was exported for
    class_names      one name per logit (the class indices "0", "1", ... when none were given)
    mean, std        per-channel normalisation: input = (image - mean) / std, the image on the scale the
                     dataset's loader gives (0..1 for 8-bit images), or null when unknown
    genotype         Genotype.to_json(); genotype_darts its DARTS string form
    network          {"in_channels", "num_classes", "init_channels", "cells"}

Only the inference path is exported: evaluation mode (BatchNorm on its running statistics), no auxiliary
head, no drop-path. The network passed in is not changed (a copy on the CPU is exported).

ONNX goes through torch's TorchScript-based exporter (``dynamo=False``, opset 17): it needs the ``onnx``
package only, where the ``torch.export``-based one also needs ``onnxscript``; this network (convolutions,
pools, concatenations) is a plain static graph that both export alike. TorchScript is a trace, which
``torch.jit.load`` reads in any process with torch.
"""

from __future__ import annotations

import copy
import io
import json
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.nn.recompute import twice_differentiable
from darts_core.spec.artifacts import EXPORT_FILES
from darts_core.train.weights import write_bytes_atomically

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_FORMAT_VERSION",
    "INPUT_NAME",
    "ONNX_OPSET",
    "OUTPUT_NAME",
    "TORCHSCRIPT_METADATA_FILE",
    "export_metadata",
    "export_onnx",
    "export_torchscript",
    "export_trained",
    "read_export_metadata",
]

#: ``format`` of the metadata.
EXPORT_FORMAT = "darts_core.export"
#: ``format_version`` written.
EXPORT_FORMAT_VERSION = 1
#: The ONNX opset exported.
ONNX_OPSET = 17
#: Names of the graph's input and output.
INPUT_NAME = "input"
OUTPUT_NAME = "logits"
#: The TorchScript extra file that holds the metadata (JSON object of the same keys as ONNX's).
TORCHSCRIPT_METADATA_FILE = "darts_core.json"


def _check_input_shape(network: GenotypeNetwork, input_shape: Any) -> tuple[int, int, int]:
    if (
        not isinstance(input_shape, Sequence)
        or isinstance(input_shape, str)
        or len(input_shape) != 3
        or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in input_shape)
    ):
        raise ValueError(
            f"input_shape must be (channels, height, width), three positive ints; got {input_shape!r}"
        )
    channels, height, width = (int(v) for v in input_shape)
    if channels != network.in_channels:
        raise ValueError(f"input_shape has {channels} channels but the network takes {network.in_channels}")
    return channels, height, width


def _check_normalisation(name: str, values: Any, channels: int) -> list[float] | None:
    if values is None:
        return None
    try:
        floats = [float(v) for v in values]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be {channels} numbers (one per channel), got {values!r}") from None
    if len(floats) != channels or not all(math.isfinite(v) for v in floats):
        raise ValueError(f"{name} must be {channels} finite numbers (one per channel), got {values!r}")
    if name == "std" and any(v <= 0 for v in floats):
        raise ValueError(f"std must be positive, got {values!r}")
    return floats


def export_metadata(
    network: GenotypeNetwork,
    *,
    input_shape: Sequence[int],
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, str]:
    """The metadata an exported file carries (module docstring), every value JSON text but the names.

    Raises:
        ValueError: ``network`` is not a GenotypeNetwork, or ``input_shape``, ``class_names``, ``mean`` or
            ``std`` does not fit it (the message names the argument).
    """
    if not isinstance(network, GenotypeNetwork):
        raise ValueError(f"network must be a GenotypeNetwork, got {type(network).__name__}")
    shape = _check_input_shape(network, input_shape)
    if class_names is None:
        names = [str(index) for index in range(network.num_classes)]
    elif isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
        raise ValueError(f"class_names must be a sequence of strings, got {class_names!r}")
    else:
        names = list(class_names)
    if len(names) != network.num_classes:
        raise ValueError(
            f"class_names has {len(names)} names but the network has {network.num_classes} classes"
        )
    mean_values = _check_normalisation("mean", mean, shape[0])
    std_values = _check_normalisation("std", std, shape[0])
    if (mean_values is None) != (std_values is None):
        raise ValueError("mean and std go together: give both or neither")
    return {
        "format": EXPORT_FORMAT,
        "format_version": str(EXPORT_FORMAT_VERSION),
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
        "input_shape": json.dumps(list(shape)),
        "class_names": json.dumps(names),
        "mean": json.dumps(mean_values),
        "std": json.dumps(std_values),
        "genotype": json.dumps(network.genotype.to_json()),
        "genotype_darts": network.genotype.to_darts(),
        "network": json.dumps(
            {
                "in_channels": network.in_channels,
                "num_classes": network.num_classes,
                "init_channels": network.init_channels,
                "cells": network.num_cells,
            }
        ),
    }


def _inference_copy(network: GenotypeNetwork) -> GenotypeNetwork:
    """A CPU copy in eval mode without the auxiliary head and drop-path (the original is untouched)."""
    model = copy.deepcopy(network).cpu().eval()
    model.auxiliary_head = None
    model.drop_path_prob = 0.0
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


@contextmanager
def _tracing() -> Iterator[None]:
    """No autograd (the memory-saving autograd Functions then stay out of the graph, as inside
    twice_differentiable), and torch's deprecation notices of its TorchScript tools kept quiet."""
    with torch.no_grad(), twice_differentiable(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def export_onnx(
    network: GenotypeNetwork,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, str]:
    """Write ``network``'s inference graph to the ONNX file ``path`` (opset 17, batch axis ``batch``).

    ``input_shape`` is ``(channels, height, width)`` of one image; ``class_names``, ``mean`` and ``std``
    go into the metadata (module docstring). The file is written under a temporary name and renamed in.
    Returns the metadata written.

    Raises:
        ValueError: a bad argument (named in the message).
        OSError: the file cannot be written.
    """
    import onnx

    metadata = export_metadata(network, input_shape=input_shape, class_names=class_names, mean=mean, std=std)
    model = _inference_copy(network)
    example = torch.zeros(2, *json.loads(metadata["input_shape"]))
    buffer = io.BytesIO()
    with _tracing():
        torch.onnx.export(
            model,
            (example,),
            buffer,  # type: ignore[arg-type]  # the TorchScript-based exporter writes to file objects too
            dynamo=False,
            opset_version=ONNX_OPSET,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_model_from_string(buffer.getvalue())
    proto.producer_name = "darts_core"
    proto.doc_string = f"DARTS network {metadata['genotype_darts']}"
    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    write_bytes_atomically(Path(path), proto.SerializeToString())
    return metadata


def export_torchscript(
    network: GenotypeNetwork,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int],
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> dict[str, str]:
    """Write ``network``'s inference graph, traced, to the TorchScript file ``path``.

    As :func:`export_onnx`; the metadata is the extra file ``darts_core.json``. ``torch.jit.load(path)``
    loads it anywhere torch is (no darts_core needed). Returns the metadata written.
    """
    metadata = export_metadata(network, input_shape=input_shape, class_names=class_names, mean=mean, std=std)
    model = _inference_copy(network)
    example = torch.zeros(2, *json.loads(metadata["input_shape"]))
    buffer = io.BytesIO()
    with _tracing():
        traced = torch.jit.trace(model, (example,), check_trace=False)
        torch.jit.save(traced, buffer, _extra_files={TORCHSCRIPT_METADATA_FILE: json.dumps(metadata)})
    write_bytes_atomically(Path(path), buffer.getvalue())
    return metadata


def export_trained(
    weights: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    format: str,
    input_shape: Sequence[int] | None = None,
) -> dict[str, str]:
    """Export the network of a trained-weights file (:func:`~darts_core.train.weights.save_trained`) to
    ``path``, ``format`` ``"onnx"`` or ``"torchscript"``, with the class names, input shape and
    normalisation the file records (``input_shape`` is needed only where it records none).

    Raises:
        ValueError: an unknown ``format``, a weights file that is not ours, or no ``input_shape`` known.
    """
    from darts_core.train.weights import load_trained, read_trained_data

    if format not in EXPORT_FILES:
        raise ValueError(f"format must be one of {', '.join(EXPORT_FILES)}, got {format!r}")
    network = load_trained(weights)
    data = read_trained_data(weights)
    shape = input_shape if input_shape is not None else data.get("input_shape")
    if shape is None:
        raise ValueError(f"input_shape: {weights} does not record the input shape; give it")
    export = export_onnx if format == "onnx" else export_torchscript
    return export(
        network,
        path,
        input_shape=tuple(shape),
        class_names=data.get("class_names"),
        mean=data.get("mean"),
        std=data.get("std"),
    )


def read_export_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The metadata of a file written by :func:`export_onnx` or :func:`export_torchscript`, the JSON
    values parsed (``input_shape`` a list, ``mean`` a list or None, ...; ``genotype_darts`` a string).

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: neither an ONNX nor a TorchScript file of ours.
    """
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(4)
    raw: dict[str, str]
    if magic.startswith(b"PK"):  # TorchScript files are zip archives
        files = {TORCHSCRIPT_METADATA_FILE: ""}
        try:
            with _tracing():
                torch.jit.load(str(path), map_location="cpu", _extra_files=files)
            raw = json.loads(files[TORCHSCRIPT_METADATA_FILE] or "{}")
        except (RuntimeError, ValueError) as error:
            raise ValueError(f"{path} is not a readable TorchScript file: {error}") from error
    else:
        import onnx

        try:
            proto = onnx.load_model(str(path), load_external_data=False)
        except Exception as error:  # protobuf's DecodeError and friends
            raise ValueError(f"{path} is not a readable ONNX file: {error}") from error
        raw = {entry.key: entry.value for entry in proto.metadata_props}
    if raw.get("format") != EXPORT_FORMAT:
        raise ValueError(f"{path} is not a darts_core export (no format {EXPORT_FORMAT!r})")
    return {key: value if key in _TEXT_KEYS else json.loads(value) for key, value in raw.items()}


_TEXT_KEYS = frozenset({"format", "input_name", "output_name", "genotype_darts"})
