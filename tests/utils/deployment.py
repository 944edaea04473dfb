"""Checks shared by the docker-compose and Kubernetes tests: that a deployment's commands and
environment are ones the code and the installed CLIs accept."""

import re
import shlex
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import typer
from mlflow.cli import server as mlflow_server
from pydantic import AliasChoices

from api.cli import app
from service.settings import Settings

with warnings.catch_warnings():  # Ray's CLI module imports Ray Serve, which warns on import
    warnings.simplefilter("ignore")
    from ray.scripts.scripts import start as ray_start

ROOT = Path(__file__).resolve().parents[2]

_CLIS: dict[tuple[str, ...], Any] = {  # click commands (typer vendors its own click)
    ("reptile", "serve"): typer.main.get_group(app).commands["serve"],
    ("ray", "start"): ray_start,
    ("mlflow", "server"): mlflow_server,
}


def settings_env_names() -> set[str]:
    """Every environment variable service.settings.Settings reads."""
    names = set()
    prefix = Settings.model_config.get("env_prefix", "")
    for name, field in Settings.model_fields.items():
        if isinstance(field.validation_alias, AliasChoices):
            names |= {str(choice) for choice in field.validation_alias.choices}
        else:
            names.add(f"{prefix}{name}".upper())
    return names


def commands(command: str | list[str]) -> list[list[str]]:
    """The argv of each program a container runs: `command` itself, or what `sh -c` chains."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    if argv[:2] != ["sh", "-c"]:
        return [argv]
    programs = []
    for part in argv[2].split("&&"):
        words = shlex.split(part)
        programs.append(words[1:] if words[0] == "exec" else words)
    return programs


def check_cli(argv: list[str]) -> tuple[str, dict[str, Any]]:
    """Parse `argv` with the installed CLI it calls (reptile serve, ray start, mlflow server),
    failing on an unknown flag or a bad value; the program and its parsed options."""
    for prefix, cli in _CLIS.items():
        if tuple(argv[: len(prefix)]) == prefix:
            args = [a.replace("$$", "$") for a in argv[len(prefix) :]]  # compose escapes $
            context = cli.make_context(" ".join(prefix), args)  # raises on a bad flag
            return " ".join(prefix), dict(context.params)
    raise AssertionError(f"no known CLI runs {argv}")


def host_port(address: str) -> tuple[str, int]:
    """The host and port of `host:port` or of a URL (a `${VAR…}` in it counts as one word)."""
    address = re.sub(r"\$\{[^}]*\}", "VAR", address)
    parts = urlsplit(address if "://" in address else f"//{address}")
    assert parts.hostname is not None and parts.port is not None, address
    return parts.hostname, parts.port
