"""The API process imports torch only where it must: validating a spec never does."""

from __future__ import annotations

import subprocess
import sys

import pytest

SCHEMAS = ["app.schemas.searches", "app.schemas.trainings", "app.schemas.studies", "app.schemas.datasets"]


@pytest.mark.parametrize("module", [*SCHEMAS, "app.main", "darts_core.config", "darts_core"])
def test_importing_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"importing {module} imported torch"


def test_the_package_still_offers_its_names_on_first_use() -> None:
    code = "import sys, darts_core as d; d.Cell; print('torch' in sys.modules, d.SearchConfig.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "darts_core.config"]
