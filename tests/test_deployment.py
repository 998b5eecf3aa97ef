"""Static checks of the deployment files (no Docker engine here: they cannot be run, only read)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from typer.main import get_command

from app.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_designed_services() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "worker"}
    # api, worker and migrate are one image with different commands.
    images = {services[name]["image"] for name in ("api", "worker", "migrate")}
    assert images == {"darts-service:latest"}


def test_compose_services_share_settings_and_artifacts() -> None:
    services = compose()["services"]
    for name in ("api", "worker", "migrate"):
        env = services[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://redis:")
    artifact_dir = services["api"]["environment"]["ARTIFACT_DIR"]
    for name in ("api", "worker"):
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services[name]["volumes"]}
        assert any(artifact_dir.startswith(target) for target in mounts), name
    assert services["api"]["volumes"] == services["worker"]["volumes"]


def test_compose_runs_migrations_before_api_and_worker() -> None:
    services = compose()["services"]
    for name in ("api", "worker"):
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"


def test_compose_worker_reserves_one_gpu() -> None:
    devices = compose()["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_compose_and_dockerfile_commands_exist() -> None:
    commands = set(get_command(cli).commands)
    services = compose()["services"]
    for name in ("migrate", "worker"):
        program, subcommand = services[name]["command"][:2]
        assert program == "darts-service" and subcommand in commands
    assert "app.main:create_app" in services["api"]["command"]
    from app.main import create_app  # noqa: F401  (the factory the api command names)


def test_dockerfile_installs_torch_pinned_first_and_copies_every_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    torch_install = dockerfile.index('"${TORCH_SPEC}"')
    assert torch_install < dockerfile.index("pip install -e .")
    assert re.search(r'ARG TORCH_SPEC="torch==[\d.]+"', dockerfile)
    packages = re.search(r'include = \[(.*?)\]', pyproject).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "COPY migrations ./migrations" in dockerfile
