"""The worker's memory cap: an allocation past WORKER_MEMORY_BYTES fails inside the process.

Without a cap, a search larger than the machine gets the worker killed by the kernel's OOM killer,
which looks like any other death from outside: the lease expires and the search is tried again, and
killed again. With the address space capped (RLIMIT_AS), the allocation fails in torch instead
("can't allocate memory"); the run reports the search `failed` with "out of memory" after that one
attempt, and the worker lives on. Applied to CPU workers only: CUDA reserves address space far beyond
physical memory, so a GPU worker keeps no cap (admission control still refuses what cannot fit).
"""

from __future__ import annotations

import logging
import resource
from pathlib import Path

logger = logging.getLogger(__name__)

# The device node every NVIDIA driver creates; its absence means this worker cannot use CUDA.
NVIDIA_CONTROL_DEVICE = Path("/dev/nvidiactl")


def apply_memory_cap(limit_bytes: int) -> bool:
    """Cap this process's address space at `limit_bytes` (never raising an existing lower cap).

    Returns whether a cap was set: not on a machine with an NVIDIA driver (see the module docstring).
    """
    if NVIDIA_CONTROL_DEVICE.exists():
        logger.info("CUDA driver present: no address-space cap on this worker")
        return False
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = limit_bytes if hard == resource.RLIM_INFINITY else min(limit_bytes, hard)
    if soft != resource.RLIM_INFINITY and soft <= cap:
        return True
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    logger.info("address space of this worker capped at %d bytes (WORKER_MEMORY_BYTES)", cap)
    return True


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation that failed (Python's MemoryError, or torch's allocator)."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)
