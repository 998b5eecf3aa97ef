"""Trained weights in one safetensors file that rebuilds its network: save_trained, load_trained.

The file is a plain `safetensors <https://huggingface.co/docs/safetensors>`_ file (the network's
``state_dict``; no pickle, so loading a file from elsewhere runs no code) whose text metadata says what
to build::

    format           "darts_core.trained"
    format_version   "1"
    genotype         the genotype, Genotype.to_json() as JSON text
    network          {"in_channels", "num_classes", "init_channels", "cells", "auxiliary"} as JSON text
    data             (when the trainer gave it) {"input_shape": [C, H, W], "class_names", "mean", "std"}
                     as JSON text: what :func:`darts_core.train.export.export_trained` writes into an
                     exported file

so ``darts_core.load_trained(path)`` returns the :class:`~darts_core.nn.genotype_network.GenotypeNetwork`
with its weights, ready for inference.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch

from darts_core.nn.genotype_network import GenotypeNetwork
from darts_core.spec.genotype import Genotype

__all__ = ["WEIGHTS_FORMAT", "WEIGHTS_FORMAT_VERSION", "save_trained", "load_trained", "read_trained_data"]

#: ``format`` metadata of a trained-weights file.
WEIGHTS_FORMAT = "darts_core.trained"
#: ``format_version`` metadata written (and the newest one read).
WEIGHTS_FORMAT_VERSION = 1


def save_trained(
    network: GenotypeNetwork,
    path: str | os.PathLike[str],
    *,
    input_shape: Sequence[int] | None = None,
    class_names: Sequence[str] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> None:
    """Write ``network``'s weights and what rebuilds it to the safetensors file ``path``, atomically.

    ``input_shape`` (``(C, H, W)`` of the training images), ``class_names`` and the normalisation
    ``mean`` / ``std`` the network was trained with are kept as the ``data`` metadata when
    ``input_shape`` is given, for an export from the file alone.

    The file is written next to ``path`` under a temporary name, flushed to disk and renamed in: a
    reader sees the old file or the whole new one, never a part.

    Raises:
        ValueError: ``network`` is not a :class:`~darts_core.nn.genotype_network.GenotypeNetwork`, or a
            data argument does not fit it (named in the message).
        OSError: the file cannot be written (nothing at ``path`` changed).
    """
    if not isinstance(network, GenotypeNetwork):
        raise ValueError(f"network must be a GenotypeNetwork, got {type(network).__name__}")
    data: dict[str, Any] | None = None
    if input_shape is not None:
        from darts_core.train.export import export_metadata  # checks the arguments as an export does

        checked = export_metadata(
            network, input_shape=input_shape, class_names=class_names, mean=mean, std=std
        )
        data = {key: json.loads(checked[key]) for key in ("input_shape", "class_names", "mean", "std")}
    elif class_names is not None or mean is not None or std is not None:
        raise ValueError("input_shape is needed with class_names, mean or std")
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
    metadata = {
        "format": WEIGHTS_FORMAT,
        "format_version": str(WEIGHTS_FORMAT_VERSION),
        "genotype": json.dumps(network.genotype.to_json()),
        "network": json.dumps(
            {
                "in_channels": network.in_channels,
                "num_classes": network.num_classes,
                "init_channels": network.init_channels,
                "cells": network.num_cells,
                "auxiliary": network.auxiliary,
            }
        ),
    }
    if data is not None:
        metadata["data"] = json.dumps(data)
    payload = safetensors.torch.save(tensors, metadata=metadata)
    write_bytes_atomically(Path(path), payload)


def write_bytes_atomically(path: Path, data: bytes) -> None:
    """``data`` into ``path`` whole or not at all: a temporary file beside it, synced, then renamed
    (an error mid-way leaves the previous file, if any, and no temporary behind; a process killed
    mid-way leaves the previous file and its temporary, ``.NAME.PID.HEX.tmp``, named by its pid)."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _metadata(path: Path) -> dict[str, str]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
    except FileNotFoundError:
        raise
    except Exception as error:  # safetensors raises its own error types for a bad header
        raise ValueError(f"{path} is not a readable safetensors file: {error}") from error
    if not metadata or metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path} is not a darts_core trained-weights file (no format {WEIGHTS_FORMAT!r})")
    return dict(metadata)


def load_trained(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> GenotypeNetwork:
    """Rebuild the :class:`~darts_core.nn.genotype_network.GenotypeNetwork` saved by :func:`save_trained`.

    The weights are loaded strictly (every tensor of the network, nothing else); the network is in eval
    mode on ``map_location``.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: a file that is not ours, of a newer format version, truncated or corrupt (the
            message names the file).
    """
    path = Path(path)
    metadata = _metadata(path)
    try:
        version = int(metadata.get("format_version", ""))
    except ValueError:
        raise ValueError(f"{path}: invalid format_version {metadata.get('format_version')!r}") from None
    if version > WEIGHTS_FORMAT_VERSION:
        raise ValueError(
            f"{path}: format version {version} is newer than this darts_core reads ({WEIGHTS_FORMAT_VERSION})"
        )
    try:
        genotype = Genotype.from_json(json.loads(metadata["genotype"]))
        arguments: dict[str, Any] = json.loads(metadata["network"])
        network = GenotypeNetwork(
            genotype,
            arguments["in_channels"],
            arguments["num_classes"],
            init_channels=arguments["init_channels"],
            cells=arguments["cells"],
            auxiliary=arguments["auxiliary"],
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"{path}: invalid network metadata: {error}") from error
    try:
        tensors = safetensors.torch.load_file(str(path), device="cpu")
    except Exception as error:  # truncated data, bad offsets
        raise ValueError(f"{path}: the weights cannot be read: {error}") from error
    try:
        network.load_state_dict(tensors, strict=True)
    except RuntimeError as error:
        raise ValueError(f"{path}: the weights do not fit the network: {error}") from error
    return network.to(map_location).eval()


def read_trained_data(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``data`` metadata of a trained-weights file: ``input_shape`` ([C, H, W]), ``class_names``,
    ``mean``, ``std`` (None when unknown); ``{}`` for a file saved without it.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: not a trained-weights file, or unreadable ``data``.
    """
    path = Path(path)
    raw = _metadata(path).get("data")
    if raw is None:
        return {}
    try:
        data = json.loads(raw)
    except ValueError as error:
        raise ValueError(f"{path}: invalid data metadata: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path}: invalid data metadata (not an object)")
    return data
