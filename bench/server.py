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
    return run_to_end(client, "/v1/jobs", body, "jobs", {"succeeded", "failed", "cancelled"})


def run_evaluation(
    client: httpx.Client, job_id: str, body: dict[str, Any]
) -> tuple[dict[str, Any], float]:
    """Submit an evaluation of the job's φ, wait for the end; its record and seconds."""
    path = f"/v1/jobs/{job_id}/evaluations"
    return run_to_end(client, path, body, "evaluations", {"succeeded", "failed"})


def run_to_end(
    client: httpx.Client, path: str, body: dict[str, Any], resource: str, ends: set[str]
) -> tuple[dict[str, Any], float]:
    """POST `body` to `path` (a 202), wait for one of `ends`; fails unless it succeeded."""
    response = client.post(path, json=body)
    if response.status_code != 202:
        raise SystemExit(f"{resource} refused: {response.status_code} {response.text}")
    record_id = response.json()["id"]
    started = time.perf_counter()
    record = wait_for_state(client, record_id, ends, JOB_TIMEOUT_S, resource)
    seconds = time.perf_counter() - started
    if record["state"] != "succeeded":
        raise SystemExit(f"{resource} {record_id} {record['state']}: {record['error']}")
    return record, seconds
