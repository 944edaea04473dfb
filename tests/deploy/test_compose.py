"""docker-compose.yml and deploy/Dockerfile: valid for Compose, and wired the way the code and
the installed CLIs read them (settings, flags, service names and ports, Ray token auth)."""

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.utils.deployment import ROOT, check_cli, commands, host_port, settings_env_names

COMPOSE = ROOT / "docker-compose.yml"
RAY_NODES = ("api", "ray-head", "ray-worker")  # the controller joins the cluster as a node
SECRETS = ("RAY_AUTH_TOKEN", "POSTGRES_PASSWORD")


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())["services"]
    return loaded


def _options(service: dict[str, Any], program: str) -> dict[str, Any]:
    """The parsed options of `program` (e.g. "ray start") in the service's command."""
    parsed = dict(check_cli(argv) for argv in commands(service["command"]))
    return parsed[program]


def _compose_config(tmp_path: Path, **secrets: str) -> subprocess.CompletedProcess[str]:
    docker_compose = shutil.which("docker-compose")
    if docker_compose is None:
        pytest.skip("docker-compose is not installed (`make test` installs it as root with apt)")
    env_file = tmp_path / "empty.env"  # not the checkout's .env, if someone made one
    env_file.touch()
    env = {k: v for k, v in os.environ.items() if k not in SECRETS} | secrets
    argv = [docker_compose, "--project-directory", str(ROOT), "-f", str(COMPOSE)]
    argv += ["--env-file", str(env_file), "config", "-q"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)


def test_compose_validates_the_file(tmp_path: Path) -> None:
    result = _compose_config(tmp_path, RAY_AUTH_TOKEN="t", POSTGRES_PASSWORD="p")
    assert result.returncode == 0, result.stderr
    # the secrets are required: never a default token or password
    for secret in SECRETS:
        given = {name: "x" for name in SECRETS if name != secret}
        result = _compose_config(tmp_path, **given)
        assert result.returncode != 0 and f"set {secret}" in result.stderr


def test_every_service_is_healthchecked_and_waited_for(services: dict[str, Any]) -> None:
    assert set(services) == {"api", "ray-head", "ray-worker", "mlflow", "postgres"}
    for name, service in services.items():
        assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in services and condition == {"condition": "service_healthy"}
    assert set(services["api"]["depends_on"]) == {"ray-head", "mlflow"}
    assert set(services["mlflow"]["depends_on"]) == {"postgres"}
    for name in RAY_NODES:  # Ray's object store lives in /dev/shm
        assert services[name]["shm_size"], name
    # `--scale ray-worker=N` needs no fixed name and no host port
    assert "container_name" not in services["ray-worker"]
    assert "ports" not in services["ray-worker"]


def test_commands_are_accepted_by_the_installed_clis(services: dict[str, Any]) -> None:
    programs = {
        name: {check_cli(argv)[0] for argv in commands(service["command"])}
        for name, service in services.items()
        if "command" in service
    }
    assert programs == {
        "api": {"ray start", "reptile serve"},
        "ray-head": {"ray start"},
        "ray-worker": {"ray start"},
        "mlflow": {"mlflow server"},
    }
    serve = _options(services["api"], "reptile serve")
    assert serve["host"] == "0.0.0.0" and serve["ui"] is False
    assert _options(services["ray-head"], "ray start")["head"] is True


def test_the_controller_environment_is_what_settings_reads(services: dict[str, Any]) -> None:
    env = services["api"]["environment"]
    reptile = {name for name in env if name.startswith("REPTILE_")}
    assert reptile <= settings_env_names(), reptile - settings_env_names()
    assert {"RAY_ADDRESS", "MLFLOW_TRACKING_URI"} <= env.keys() & settings_env_names()
    mounts = {volume.rsplit(":", 2)[1] for volume in services["api"]["volumes"]}  # src:dst:mode
    assert {env["REPTILE_DATA_DIR"], env["REPTILE_DATA_ROOT"]} <= mounts
    # image jobs' actors read the prepared data sets under the data dir: same path on workers
    assert f"reptile-data:{env['REPTILE_DATA_DIR']}:ro" in services["ray-worker"]["volumes"]


def test_addresses_name_services_and_their_ports(services: dict[str, Any]) -> None:
    api_env = services["api"]["environment"]
    head = _options(services["ray-head"], "ray start")
    assert host_port(api_env["RAY_ADDRESS"]) == ("ray-head", head["port"])
    worker = _options(services["ray-worker"], "ray start")
    assert host_port(worker["address"]) == ("ray-head", head["port"])
    mlflow = _options(services["mlflow"], "mlflow server")
    assert host_port(api_env["MLFLOW_TRACKING_URI"]) == ("mlflow", mlflow["port"])
    assert mlflow["serve_artifacts"] is True
    assert f"mlflow-artifacts:{mlflow['artifacts_destination']}" in services["mlflow"]["volumes"]
    # the MLflow server's store is the postgres service's database
    store = services["mlflow"]["environment"]["MLFLOW_BACKEND_STORE_URI"]
    postgres = services["postgres"]["environment"]
    assert store.startswith(f"postgresql://{postgres['POSTGRES_USER']}:")
    assert store.endswith(f"/{postgres['POSTGRES_DB']}")
    assert host_port(store) == ("postgres", 5432)
    # published ports are the ones the programs listen on; the UI link uses MLflow's
    serve = _options(services["api"], "reptile serve")
    assert services["api"]["ports"] == [f"127.0.0.1:{serve['port']}:{serve['port']}"]
    assert services["mlflow"]["ports"] == [f"127.0.0.1:{mlflow['port']}:{mlflow['port']}"]
    assert host_port(api_env["REPTILE_MLFLOW_UI_URL"])[1] == mlflow["port"]


def test_ray_token_auth_is_the_same_on_every_node(services: dict[str, Any]) -> None:
    tokens = set()
    for name in RAY_NODES:
        env = services[name]["environment"]
        assert env["RAY_AUTH_MODE"] == "token", name
        tokens.add(env["RAY_AUTH_TOKEN"])
    (token,) = tokens
    assert token.startswith("${RAY_AUTH_TOKEN:?")  # from the environment, required


def test_the_dockerfile_installs_cpu_torch_first_then_the_package() -> None:
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    pin = (ROOT / "constraints.txt").read_text().strip()
    assert pin == "torch==2.13.0"
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    installs = re.findall(r"pip install [^\n]*", dockerfile)
    assert '"torch==${TORCH_VERSION}"' in installs[0]
    assert all("-c constraints.txt" in line for line in installs[1:])
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in packages:  # "reptile*" → COPY reptile ./reptile
        name = package.rstrip("*")
        assert f"COPY {name} ./{name}" in dockerfile, name
