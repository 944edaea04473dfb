"""A real `reptile serve` for benchmarks, started and stopped by the tests' server helper
(`tests.utils.server`): a free loopback port, a local Ray, SQLite MLflow in the data dir."""

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.utils.server import Server, start_server, wait_for_state

JOB_TIMEOUT_S = 24 * 3600  # a benchmark job runs as long as it needs; this only bounds a hang


@contextmanager
def running_server(
    data_dir: Path, *, ui: bool = False, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """A server on `data_dir` (with the MLflow UI beside it if `ui`, as `make serve`), ready
    to take jobs, with `env` added to its environment; its Ray advertises the machine's CPUs
    unless `env` says otherwise. The server's log is in `data_dir`."""
    environment = {"REPTILE_RAY_NUM_CPUS": str(os.cpu_count() or 1), **(env or {})}
    server = start_server(data_dir, data_dir, ui=ui, **environment)
    try:
        yield server
    finally:
        server.stop()


def run_job(client: httpx.Client, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Submit `body`, wait for the end; returns the final record and the seconds it ran."""
    response = client.post("/v1/jobs", json=body)
    if response.status_code != 202:
        raise SystemExit(f"job refused: {response.status_code} {response.text}")
    job_id = response.json()["id"]
    started = time.perf_counter()
    record = wait_for_state(client, job_id, {"succeeded", "failed", "cancelled"}, JOB_TIMEOUT_S)
    seconds = time.perf_counter() - started
    if record["state"] != "succeeded":
        raise SystemExit(f"job {job_id} {record['state']}: {record['error']}")
    return record, seconds
