"""The deployed topology without containers: a job through `reptile serve` on a two-node Ray
cluster, logged to an MLflow tracking server on PostgreSQL that serves the artifacts.

What docker-compose.yml and deploy/kubernetes/ wire up, with the same variables: RAY_ADDRESS at
the head, MLFLOW_TRACKING_URI at the server, Ray token auth on every node and on the controller.
"""

import os
import secrets
from pathlib import Path

import psycopg
import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load, load_file

from tests.utils.server import launch_server, wait_for_state
from tests.utils.topology import Topology, postgres_bin, topology

pytestmark = pytest.mark.cluster

ROUNDS = 12
JOB = {
    "name": "two-nodes",
    "rounds": ROUNDS,
    "meta_batch_size": 4,
    "num_workers": 2,
    "eval_every": 6,
    "checkpoint_every": 6,
    "eval_tasks": 4,
    "seed": 3,
}


def test_a_job_spreads_over_two_ray_nodes_and_lands_in_the_mlflow_server(tmp_path: Path) -> None:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (`make test` installs it as root with apt)")
    # Ray ≥ 2.59 may turn token auth on by itself; say it explicitly, with one token everywhere.
    token = secrets.token_hex(32)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    env.pop("RAY_ADDRESS", None)
    logs = tmp_path / "logs"
    artifacts = tmp_path / "artifacts"
    logs.mkdir()
    artifacts.mkdir()
    with topology(logs, artifacts, env, num_cpus=2) as cluster:
        job, weights = _run_job(tmp_path / "service", cluster, token)
        with psycopg.connect(cluster.database) as connection, connection.cursor() as cursor:
            cursor.execute("SELECT status FROM runs WHERE run_uuid = %s", (job["run_id"],))
            assert cursor.fetchall() == [("FINISHED",)]  # the run is in PostgreSQL
        client = MlflowClient(cluster.mlflow_url)
        run = client.get_run(job["run_id"])
        history = client.get_metric_history(run.info.run_id, "meta_loss_after")

    # both nodes ran chunks: SPREAD placed one actor on each
    assert len(cluster.ray_nodes) == 2
    assert set(run.data.tags["ray_nodes"].split(",")) == set(cluster.ray_nodes.values())
    assert run.info.status == "FINISHED" and run.info.run_name == "two-nodes"
    assert [m.step for m in history] == list(range(1, ROUNDS + 1))
    assert "eval_mse_after_32" in run.data.metrics
    # the client uploaded through the server, which wrote them under --artifacts-destination
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    stored = artifacts / run.info.experiment_id / run.info.run_id / "artifacts"
    phi = load_file(stored / "weights" / "phi.safetensors")
    assert phi.keys() == weights.keys()
    assert all(torch.equal(phi[name], weights[name]) for name in phi)
    assert (stored / "plots" / "sine_fit.png").stat().st_size > 0
    assert (stored / "checkpoints" / "checkpoint.safetensors").exists()


def _run_job(
    data_dir: Path, cluster: Topology, ray_token: str
) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    """Serve on the cluster, run JOB to the end; its MLflow ids and the φ the API returns."""
    server = launch_server(  # while MLflow still starts: the API needs only Ray to be ready
        data_dir,
        RAY_ADDRESS=cluster.ray_address,
        MLFLOW_TRACKING_URI=cluster.mlflow_url,
        REPTILE_MLFLOW_UI_URL=cluster.mlflow_url,
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=ray_token,
    )
    try:
        cluster.wait_for_mlflow()
        server.wait_ready()
        with server.client() as client:
            response = client.post("/v1/jobs", json=JOB)
            assert response.status_code == 202, response.text
            job_id = response.json()["id"]
            record = wait_for_state(client, job_id, {"succeeded", "failed", "cancelled"}, 150)
            assert record["state"] == "succeeded", (record["error"], server.log()[-4000:])
            assert record["mlflow"]["tracking_uri"] == cluster.mlflow_url
            assert record["mlflow"]["status"] == "ok"
            assert record["mlflow"]["ui_url"].startswith(cluster.mlflow_url)
            weights = load(client.get(f"/v1/jobs/{job_id}/weights").content)
    finally:
        server.stop()
    return record["mlflow"], weights
