"""Fixtures the library's tests share."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread for the test: sums in a fixed order, and no oversubscription of the cores
    beside the suite's servers. The count the process had is restored after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_dataset():
    """The tiny search dataset: 64 samples -> 51 for training (the rest is the test split) -> 25
    search-train, 26 search-valid: 3 steps of 8 per epoch."""
    from darts_core.data.registry import load_dataset

    return load_dataset(
        {"name": "synthetic", "num_samples": 64, "channels": 1, "image_size": 6, "num_classes": 3}
    )
