"""A real `reptile serve` for benchmarks: started on a free port, stopped on exit."""

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(data_dir: Path, **env: str) -> Iterator[httpx.Client]:
    """A client for a server on `data_dir` (local Ray, SQLite MLflow), ready to take jobs."""
    port = _free_port()
    environment = {**os.environ, "REPTILE_DATA_DIR": str(data_dir), **env}
    reptile = Path(sys.executable).with_name("reptile")
    server = subprocess.Popen(
        [str(reptile), "serve", "--no-ui", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            for _ in range(600):
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            yield client
    finally:
        server.terminate()
        server.wait(120)


def run_job(client: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Submit `body`, wait for the end; returns the final record and the seconds it ran."""
    response = client.post("/v1/jobs", json=body)
    if response.status_code != 202:
        raise SystemExit(f"job refused: {response.status_code} {response.text}")
    job_id = response.json()["id"]
    started = time.perf_counter()
    while (record := client.get(f"/v1/jobs/{job_id}").json())["state"] in ("queued", "running"):
        time.sleep(1)
    seconds = time.perf_counter() - started
    if record["state"] != "succeeded":
        raise SystemExit(f"job {job_id} {record['state']}: {record['error']}")
    return record, seconds
