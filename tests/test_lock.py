"""requirements.lock pins everything an install pulls, and every install applies it.

The closure of darts-service[dev]'s requirements is walked through the installed distributions'
metadata (markers evaluated for this machine), so a dependency that a new release of any package
adds fails here until `make lock` is run again.
"""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"
PROJECT = "darts-service"


def _lock_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for number, line in enumerate(LOCK.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert match, f"requirements.lock:{number}: not a name==version pin: {line!r}"
        name = canonicalize_name(match.group(1))
        assert name not in pins, f"requirements.lock:{number}: {name} pinned twice"
        pins[name] = match.group(2)
    return pins


def _install_closure() -> dict[str, str]:
    """Every distribution that installing darts-service[dev] pulls here: name -> installed version."""
    seen: dict[str, str] = {}
    pending: list[tuple[str, frozenset[str]]] = [(PROJECT, frozenset({"dev"}))]
    expanded: set[tuple[str, frozenset[str]]] = set()
    while pending:
        name, extras = pending.pop()
        if (name, extras) in expanded:
            continue
        expanded.add((name, extras))
        dist = metadata.distribution(name)
        seen[name] = dist.version
        for text in dist.requires or []:
            requirement = Requirement(text)
            wanted = any(
                requirement.marker is None
                or requirement.marker.evaluate({**default_environment(), "extra": extra})
                for extra in (extras or {""})
            )
            if wanted:
                pending.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return seen


def _public(version: str) -> str:
    return Version(version).public


def test_the_lock_pins_every_distribution_the_install_pulls_at_the_installed_version() -> None:
    pins = _lock_pins()
    closure = _install_closure()
    closure.pop(PROJECT)
    missing = sorted(set(closure) - set(pins))
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    drifted = {
        name: (version, pins[name])
        for name, version in closure.items()
        if _public(version) != _public(pins[name])
    }
    assert not drifted, f"installed (version, locked version) differ (run `make install`): {drifted}"
    # The tools the install itself runs with are locked too.
    for tool in ("pip", "setuptools"):
        assert tool in pins, tool


def test_torch_is_locked_as_the_makefile_and_the_dockerfile_pin_it() -> None:
    pins = _lock_pins()
    makefile_spec = re.search(r"^TORCH_SPEC \?= (\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    docker_spec = re.search(r'^ARG TORCH_SPEC="(\S+)"$', (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert makefile_spec and docker_spec
    assert makefile_spec.group(1) == docker_spec.group(1) == f"torch=={pins['torch']}"
    # A local label (+cpu, +cu128) would refuse the other builds of the same release.
    assert "+" not in pins["torch"]


def test_every_install_applies_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "LOCK := requirements.lock" in makefile
    assert "PIP_FLAGS := --quiet --disable-pip-version-check --constraint $(LOCK)" in makefile
    installs = re.findall(r"^\t\$\(BIN\)/pip install (.*)$", makefile, flags=re.MULTILINE)
    assert len(installs) == 3 and all(line.startswith("$(PIP_FLAGS) ") for line in installs), installs
    assert re.search(r"^\$\(STAMP\):.*\$\(LOCK\)", makefile, flags=re.MULTILINE), "a new lock reinstalls"
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "COPY requirements.lock ./" in dockerfile
    pip_installs = re.findall(r"pip install [^\\\n]*", dockerfile)
    for line in pip_installs:
        assert "--constraint requirements.lock" in line or "--no-deps" in line, line
