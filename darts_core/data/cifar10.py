"""Reading CIFAR-10's python-format batch files with a restricted unpickler (trusted local files only)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from darts_core.spec.dataset_spec import DatasetError

__all__ = ["read_cifar_batch"]

# What a CIFAR-10 batch pickle (a dict of a uint8 numpy array and a list of labels) may reference.
_CIFAR_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickler that only resolves the few numpy globals a CIFAR-10 batch needs.

    It narrows what a malicious file could do, but pickles remain a code format: give only trusted
    local files.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _CIFAR_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            # Files pickled with numpy 1.x name numpy.core, which numpy 2 only keeps as a deprecated alias.
            module = "numpy._core." + module.removeprefix("numpy.core.")
        return super().find_class(module, name)


def read_cifar_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``N x 3 x 32 x 32`` uint8 and labels int64 of one batch file; DatasetError when invalid."""
    if not file.is_file():
        raise DatasetError(f"cifar10: missing file {file.name} in {file.parent}")
    try:
        with file.open("rb") as handle:
            batch = _CifarUnpickler(handle, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        ImportError,
        IndexError,
    ) as error:
        raise DatasetError(f"cifar10: cannot read {file.name}: {error}") from error
    if not isinstance(batch, dict):
        raise DatasetError(f"cifar10: {file.name} does not hold a dict")
    # The original files are Python 2 pickles (bytes keys); accept str keys as well.
    entries = {key.decode() if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in entries or "labels" not in entries:
        raise DatasetError(f"cifar10: {file.name} lacks 'data' or 'labels'")
    data = np.asarray(entries["data"])
    labels = np.asarray(entries["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DatasetError(
            f"cifar10: {file.name} data must be uint8 N x 3072, got {data.dtype} {tuple(data.shape)}"
        )
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "ui":
        raise DatasetError(f"cifar10: {file.name} needs {data.shape[0]} integer labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"cifar10: {file.name} has labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)
