"""``darts export WEIGHTS``: a trained-weights file (``model.safetensors``) as ONNX or TorchScript, locally.

The service builds its ``model.onnx`` / ``model.pt`` downloads with this command, in a child process, so
that the API process never imports torch. torch is imported when the command runs, not when the module is.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from darts_core.cli.common import console, fail
from darts_core.client.trainings import ExportFormatOption
from darts_core.spec.artifacts import ExportFormat

__all__ = ["export"]


def _parse_input_shape(text: str | None) -> tuple[int, int, int] | None:
    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise fail(f"--input-shape must be C,H,W (three positive integers), got {text!r}")
    return shape


def export(
    weights: Annotated[
        Path,
        typer.Argument(
            metavar="WEIGHTS", help="A model.safetensors written by `darts train` or the service."
        ),
    ],
    format: ExportFormatOption = ExportFormat.onnx,
    out: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Where to write the file. Default: model.onnx or model.pt beside WEIGHTS."
        ),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(help="C,H,W of one image: needed only for a weights file that does not record it."),
    ] = None,
) -> None:
    """Export a trained network as ONNX or TorchScript: a file that runs without darts_core and carries
    its input shape, class names, normalisation (mean, std) and genotype as metadata."""
    shape = _parse_input_shape(input_shape)
    if not weights.is_file():
        raise fail(f"weights file {weights} does not exist")
    path = out if out is not None else weights.with_name(format.file_name)
    from darts_core.train.export import export_trained

    try:
        export_trained(weights, path, format=format.value, input_shape=shape)
    except ValueError as error:
        raise fail(str(error)) from None
    console.print(f"wrote {path} ({path.stat().st_size} bytes)", highlight=False)
