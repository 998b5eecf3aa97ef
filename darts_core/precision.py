"""Numeric precision of a search: ``resources.precision`` resolved for a device, and exact fp32 passes.

Two things decide how a search's forwards round:

* **autocast** (``torch.autocast`` with bf16): the forwards' convolutions and matmuls in bf16, parameters,
  gradients and optimizer states in fp32. :func:`resolve_autocast` turns ``resources.precision``
  (``auto``, ``fp32``, ``bf16``) into the autocast dtype for a device.
* **TF32** on CUDA: fp32 convolutions (cuDNN's default) and, when enabled, fp32 matmuls rounded to a 10-bit
  mantissa. :func:`exact_fp32` turns both autocast and TF32 off for the passes that need every bit, the
  finite-difference passes of the second-order architecture step (see
  :class:`~darts_core.search.bilevel.DartsSearch`).

``auto`` is the measured default (benchmarks/README.md, "Precision of the architecture step"): on CPU
fp32 (CPU bf16 autocast is slower and no more right), on CUDA bf16 autocast for the weight step while the
architecture step stays fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

__all__ = ["PRECISIONS", "exact_fp32", "resolve_autocast"]

#: The values of ``resources.precision``.
PRECISIONS = ("auto", "fp32", "bf16")


def resolve_autocast(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: plain fp32).

    ``auto``: bf16 on CUDA, fp32 elsewhere. ``bf16`` is honoured on CPU too (CPU autocast exists; it is
    slow on CPUs without bf16 units and useful to reproduce GPU rounding in tests).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """Inside: no autocast on ``device`` and no TF32 (cuDNN convolutions and CUDA matmuls in IEEE fp32).

    The TF32 switches are process-wide; they are restored on exit. Only the newer ``fp32_precision``
    interface is used (mixing it with the legacy ``allow_tf32`` flags makes torch raise on a read).
    """
    # torch's stubs omit cudnn's ``conv`` namespace (the runtime has it since 2.9).
    conv: Any = torch.backends.cudnn.conv  # type: ignore[attr-defined]
    matmul = torch.backends.cuda.matmul
    saved = (conv.fp32_precision, matmul.fp32_precision)
    device_type = "cpu" if device.type == "meta" else device.type
    try:
        conv.fp32_precision = "ieee"
        matmul.fp32_precision = "ieee"
        with torch.autocast(device_type=device_type, enabled=False):
            yield
    finally:
        conv.fp32_precision, matmul.fp32_precision = saved
