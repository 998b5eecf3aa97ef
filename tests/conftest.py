"""Suite-wide settings.

Torch runs on one thread in tests: the suite shares two cores with the Celery worker subprocesses of
the integration tests, and oversubscribed intra-op threads make small convolutions many times slower.
Subprocesses inherit the same choice through OMP_NUM_THREADS.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402  (after OMP_NUM_THREADS, which torch reads when it loads)

torch.set_num_threads(1)


def write_npz_of_zeros(path, shape: tuple[int, ...], dtype: str = "uint8", labels: int = 10) -> None:
    """An `.npz` whose `x` is `shape` zeros, written (deflated) in 1 MiB pieces: a zip bomb of a few
    hundred KB for large shapes, made without ever holding the array. `y` cycles through `labels`."""
    import math
    import zipfile

    import numpy as np

    stand_in = np.broadcast_to(np.zeros((), dtype=dtype), shape)
    header = np.lib.format.header_data_from_array_1_0(stand_in)
    remaining = math.prod(shape) * np.dtype(dtype).itemsize
    piece = bytes(2**20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            np.lib.format.write_array_header_1_0(member, header)
            while remaining:
                count = min(remaining, len(piece))
                member.write(piece[:count])
                remaining -= count
        with archive.open("y.npy", "w") as member:
            np.lib.format.write_array(member, np.arange(shape[0]) % labels)
