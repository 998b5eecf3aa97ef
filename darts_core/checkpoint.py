"""Search checkpoints: written atomically, two generations kept, read back with a fallback.

A checkpoint directory holds ``checkpoint.pt`` (the latest finished epoch) and ``checkpoint.prev.pt``
(the one before). Each is a dict loadable with ``torch.load(path, weights_only=True)``:

* ``format``: :data:`CHECKPOINT_FORMAT`;
* ``epoch``: the last finished epoch;
* ``spec``: :meth:`darts_core.spec.search_spec.SearchConfig.to_spec` of the search that wrote it;
* ``search``: :meth:`darts_core.search.bilevel.DartsSearch.state_dict`;
* ``rng``: Python, NumPy, torch and (for a CUDA run) its device's RNG states as tensors and plain values;
* ``history``: one :class:`darts_core.spec.records.EpochRecord` dict per finished epoch.

A writer dies at any point without harm: the new generation is written to a temporary file of its own
(pid and a random suffix, so two writers never share one), flushed to disk, and only then renamed in.
A latest file that cannot be read (truncated by a crash of the machine, say) is passed over for the
previous generation, so the search redoes one epoch instead of starting over.
"""

from __future__ import annotations

import errno
import os
import random
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CHECKPOINT_NAME",
    "PREVIOUS_CHECKPOINT_NAME",
    "CHECKPOINT_FORMAT",
    "CheckpointDiskFull",
    "write_checkpoint",
    "load_checkpoint",
    "load_optimizer_state",
    "has_checkpoint",
    "read_history",
    "rng_state",
    "set_rng_state",
    "spec_differences",
]

#: File name of the latest checkpoint in a checkpoint directory.
CHECKPOINT_NAME = "checkpoint.pt"
#: File name of the generation before it.
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
CHECKPOINT_FORMAT = 1


class CheckpointDiskFull(OSError):
    """The disk (or quota) is full: the checkpoint was not written; the previous ones are intact."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, "disk full", str(path))


def _generations(directory: Path) -> list[Path]:
    return [directory / CHECKPOINT_NAME, directory / PREVIOUS_CHECKPOINT_NAME]


def has_checkpoint(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a checkpoint of either generation."""
    return any(path.exists() for path in _generations(Path(directory)))


def write_checkpoint(state: Mapping[str, Any], directory: str | os.PathLike[str]) -> Path:
    """Write ``state`` as the latest generation in ``directory``; the latest one becomes the previous.

    Raises:
        CheckpointDiskFull: no space left (``ENOSPC``); nothing in ``directory`` changed.
        OSError: any other failure to write; nothing in ``directory`` changed either.
    """
    directory = Path(directory)
    latest, previous = _generations(directory)
    temporary = directory / f".{CHECKPOINT_NAME}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temporary, "wb") as handle:
            torch.save(dict(state), handle)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            raise CheckpointDiskFull(latest) from error
        raise
    # Between these two renames only the previous generation exists; load_checkpoint reads it then.
    if latest.exists():
        os.replace(latest, previous)
    os.replace(temporary, latest)
    _fsync_directory(directory)
    return latest


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def _read(path: Path, map_location: Any) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated, corrupt or foreign: say which file
        raise ValueError(f"checkpoint {path} cannot be read: {error}") from error
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"checkpoint {path} is not a darts_core search checkpoint (format {CHECKPOINT_FORMAT})"
        )
    return state


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """``optimizer.load_state_dict(state)``, each ``step`` tensor then placed as the optimizer keeps it.

    Adam and its kind keep ``step`` as a float32 scalar on the CPU unless the group is ``capturable``
    or ``fused`` (then on the parameter's device), and ``load_state_dict`` leaves it where the
    checkpoint was mapped: read with ``map_location`` onto a GPU, it stayed there, and every step synced
    the device once per parameter to read it. Other state (moments) goes to the parameter's device as
    ``load_state_dict`` puts it.
    """
    optimizer.load_state_dict(dict(state))
    for group in optimizer.param_groups:
        on_device = bool(group.get("capturable")) or bool(group.get("fused"))
        for parameter in group["params"]:
            step = optimizer.state.get(parameter, {}).get("step")
            if not isinstance(step, Tensor):
                continue
            device = parameter.device if on_device else torch.device("cpu")
            if step.device != device or step.dtype != torch.float32:
                optimizer.state[parameter]["step"] = step.to(device=device, dtype=torch.float32)


def load_checkpoint(
    directory: str | os.PathLike[str], map_location: Any = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The newest readable generation in ``directory`` and its path; None when there is none.

    Raises:
        ValueError: a checkpoint exists but no generation can be read (the error names each file).
    """
    problems = []
    for path in _generations(Path(directory)):
        if not path.exists():
            continue
        try:
            return _read(path, map_location), path
        except ValueError as error:
            problems.append(str(error))
    if problems:
        raise ValueError("; ".join(problems))
    return None


def read_history(directory: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The epoch records (:class:`~darts_core.spec.records.EpochRecord` dicts) of ``directory``'s checkpoint.

    ``[]`` when the directory holds no checkpoint. Reads the same generation a resumed search would.
    """
    loaded = load_checkpoint(directory)
    if loaded is None:
        return []
    return [dict(record) for record in loaded[0].get("history") or []]


def rng_state(device: torch.device | None = None) -> dict[str, Any]:
    """RNG states of Python, NumPy, torch CPU and the run's CUDA device as tensors and plain values.

    ``cuda`` holds the generator of ``device`` only, when it is a CUDA device:
    ``{"index": i, "state": ByteTensor}``; ``{}`` otherwise. (Before issue 22 it was the list of every
    visible GPU's state, even for CPU runs, which made a context on each GPU and could not be restored
    on a machine with fewer; :func:`set_rng_state` still reads that form.)
    """
    version, python_state, gauss = random.getstate()
    # get_state() returns the legacy tuple by default; its stub also allows the dict form.
    numpy_state = cast("tuple[str, np.ndarray, int, int, float]", np.random.get_state())
    _, numpy_keys, numpy_pos, numpy_has_gauss, numpy_gauss = numpy_state
    cuda: dict[str, Any] = {}
    if device is not None and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        cuda = {"index": index, "state": torch.cuda.get_rng_state(index)}
    return {
        "python": {"version": version, "state": list(python_state), "gauss": gauss},
        "numpy": {
            "keys": torch.from_numpy(numpy_keys.astype(np.int64)),
            "pos": int(numpy_pos),
            "has_gauss": int(numpy_has_gauss),
            "gauss": float(numpy_gauss),
        },
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def _saved_cuda_state(saved: Any, index: int) -> Tensor | None:
    """The CUDA generator state of a checkpoint's ``rng["cuda"]`` for a run on GPU ``index`` (None: none).

    New form ``{"index", "state"}``: its one state. The old form, one state per GPU visible when it was
    written: that of GPU ``index`` when it had one, else the first (the old form never recorded which GPU
    the run used).
    """
    if isinstance(saved, Mapping):
        state = saved.get("state")
        return state if isinstance(state, Tensor) else None
    if isinstance(saved, list | tuple) and saved and all(isinstance(item, Tensor) for item in saved):
        return saved[index] if index < len(saved) else saved[0]
    return None


def set_rng_state(state: Mapping[str, Any], device: torch.device | None = None) -> None:
    """Restore what :func:`rng_state` returned (or its older form) for a run on ``device``.

    The saved CUDA state goes to ``device``'s generator when that is a CUDA device (whichever index it
    had when saved: a resumed run may land on another GPU or another machine); on CPU it is ignored, and a
    checkpoint without one leaves the CUDA generator as seeded.
    """
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    keys = numpy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"].cpu())
    if device is not None and device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        cuda_state = _saved_cuda_state(state.get("cuda"), index)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state.cpu(), index)


def spec_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    """Fields that differ between two specs, as ``"path (old in the checkpoint, new now)"``."""
    for key in sorted(set(saved) | set(current)):
        path = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            yield from spec_differences(old, new, f"{path}.")
        elif old != new:
            yield f"{path} ({old!r} in the checkpoint, {new!r} now)"
