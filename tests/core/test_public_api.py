"""Every name of darts_core's lazy public API resolves (a moved module breaks it only on first use)."""

from __future__ import annotations

import pytest

import darts_core


@pytest.mark.parametrize("name", darts_core.__all__)
def test_every_public_name_resolves(name: str) -> None:
    assert getattr(darts_core, name) is not None
