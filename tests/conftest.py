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
