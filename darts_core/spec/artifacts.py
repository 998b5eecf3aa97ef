"""The files a finished training leaves, by name: one definition for ``darts train``, the ``darts``
client and the service, none of which may import torch to know them."""

from __future__ import annotations

from enum import StrEnum

__all__ = ["EXPORT_FILES", "WEIGHTS_FILE", "ExportFormat"]

#: The trained weights (safetensors; ``darts_core.load_trained`` reads them).
WEIGHTS_FILE = "model.safetensors"


class ExportFormat(StrEnum):
    """A format a trained network is exported to (``darts_core.train.export``)."""

    onnx = "onnx"
    torchscript = "torchscript"

    @property
    def file_name(self) -> str:
        """The file written beside :data:`WEIGHTS_FILE`: ``model.onnx`` or ``model.pt``."""
        return EXPORT_FILES[self.value]


#: Export format -> the file written beside the weights.
EXPORT_FILES: dict[str, str] = {"onnx": "model.onnx", "torchscript": "model.pt"}
