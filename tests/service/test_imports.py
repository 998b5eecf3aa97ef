"""The API process imports torch only where it must: validating a spec never does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCHEMAS = ["app.schemas.searches", "app.schemas.trainings", "app.schemas.studies", "app.schemas.datasets"]

TORCH_FREE = [
    *SCHEMAS,
    "app.main",
    "darts_core",
    "darts_core.spec",
    "darts_core.spec.search_spec",
    "darts_core.spec.training_spec",
    "darts_core.spec.dataset_spec",
    "darts_core.spec.genotype",
    "darts_core.spec.records",
    "darts_core.spec.op_names",
    "darts_core.spec.artifacts",
    "darts_core.spec.random_genotype",
    "darts_core.client",
    "darts_core.client.http",
    "darts_core.client.sse",
    "darts_core.client.searches",
    "darts_core.client.trainings",
    "darts_core.client.studies",
    "darts_core.cli.main",
    "darts_core.data.npz",
    "darts_core.data.archive",
    "darts_core.data.cifar10",
]


@pytest.mark.parametrize("module", TORCH_FREE)
def test_importing_does_not_import_torch(module: str) -> None:
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False", f"importing {module} imported torch"


def test_the_package_still_offers_its_names_on_first_use() -> None:
    code = "import sys, darts_core as d; d.Cell; print('torch' in sys.modules, d.SearchConfig.__module__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "darts_core.spec.search_spec"]


def test_every_torch_free_module_is_listed() -> None:
    """A new module in a torch-free subpackage (spec/, client/) is held to it here too."""
    root = Path(__file__).resolve().parents[2] / "darts_core"
    for package in ("spec", "client"):
        for path in (root / package).glob("[!_]*.py"):
            assert f"darts_core.{package}.{path.stem}" in TORCH_FREE, path


@pytest.mark.parametrize(
    "args", [["--help"], ["datasets", "--help"], ["train", "--help"], ["watch", "--help"]],
)
def test_the_darts_command_starts_without_torch(args: list[str]) -> None:
    """The console script itself, in a process where `import torch` fails."""
    script = Path(sys.executable).with_name("darts")
    code = (
        "import runpy, sys; sys.modules['torch'] = None; "
        f"sys.argv = [{str(script)!r}, *sys.argv[1:]]; runpy.run_path({str(script)!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage" in result.stdout
