"""A real `reptile serve` in a subprocess on a free loopback port, and an SSE reader."""

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from safetensors.torch import load

from reptile.params import Params
from tests.utils.net import free_port, wait_until


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.data_dir / 'mlflow.db'}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(timeout=120)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 180) -> None:
        """Wait until /readyz answers; fail with the log if the server exits first."""

        def ready() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, timeout, "the server to become ready")


def start_server(
    data_dir: Path, log_dir: Path | None = None, *, ui: bool = False, **env: str
) -> Server:
    """Start the service (see `launch_server`) and wait until it is ready."""
    server = launch_server(data_dir, log_dir, ui=ui, **env)
    server.wait_ready()
    return server


def launch_server(
    data_dir: Path, log_dir: Path | None = None, *, ui: bool = False, **env: str
) -> Server:
    """Start the service like a user would (`reptile serve --no-ui`, or with the MLflow UI on
    a free port as `make serve` starts it), without waiting.

    Its output goes to a log in `log_dir` (default: the data dir). It gets a local Ray and
    MLflow store unless `env` names RAY_ADDRESS / MLFLOW_TRACKING_URI (those of the test's own
    environment are never inherited).
    """
    port = free_port()
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = (log_dir or data_dir) / f"server-{port}.log"
    inherited = {
        k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")
    }
    environment = {
        **inherited,
        "REPTILE_DATA_DIR": str(data_dir),
        "REPTILE_RAY_NUM_CPUS": "4",
        **env,
    }
    reptile = Path(sys.executable).with_name("reptile")
    ui_args = ["--ui-port", str(free_port())] if ui else ["--no-ui"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(reptile), "serve", *ui_args, "--host", "127.0.0.1", "--port", str(port)],
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    return Server(f"http://127.0.0.1:{port}", data_dir, process, log_path)


def events(
    client: httpx.Client, path: str, timeout: float = 300
) -> Iterator[tuple[str | None, Any]]:
    """The (event, data) pairs of a server-sent event stream."""
    with client.stream("GET", path, timeout=timeout) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        event = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                event = line.removeprefix("event:").strip()
            elif line.startswith("data:"):
                yield event, json.loads(line.removeprefix("data:"))


def wait_for_state(
    client: httpx.Client,
    job_id: str,
    states: set[str],
    timeout: float = 300,
    resource: str = "jobs",
) -> dict[str, Any]:
    """The record of `/v1/<resource>/<job_id>` once its state is one of `states`."""
    record: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal record
        record = client.get(f"/v1/{resource}/{job_id}").json()
        return record["state"] in states

    wait_until(reached, timeout, f"{resource} {job_id} to reach {states}", every=0.5)
    return record


def wait_for_round(
    client: httpx.Client, job_id: str, round_reached: int, timeout: float = 300
) -> dict[str, Any]:
    """The job's record once it has completed `round_reached` rounds (fails if it ended first)."""
    record: dict[str, Any] = {}

    def reached() -> bool:
        nonlocal record
        record = client.get(f"/v1/jobs/{job_id}").json()
        assert record["state"] in ("queued", "running"), record
        return record["round"] >= round_reached

    wait_until(reached, timeout, f"job {job_id} to reach round {round_reached}", every=0.05)
    return record


def resume(client: httpx.Client, job_id: str) -> httpx.Response:
    """POST …/resume, waiting out the moment a stopped job takes to release its workers."""
    response = client.post(f"/v1/jobs/{job_id}/resume")
    while response.status_code == 409 and "still stopping" in response.text:
        time.sleep(0.1)
        response = client.post(f"/v1/jobs/{job_id}/resume")
    return response


def succeeded(server: Server, job_id: str) -> tuple[dict[str, Any], Params]:
    """The job's record once it has succeeded (fails if it failed instead), and its final φ."""
    with server.client() as client:
        done = wait_for_state(client, job_id, {"succeeded", "failed"})
        assert done["state"] == "succeeded", done
        return done, load(client.get(f"/v1/jobs/{job_id}/weights").content)
