"""The MLflow tracking server stops mid-job and comes back: training goes on, nothing is lost."""

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from safetensors.torch import load

from tests.utils.mlflow_server import MlflowServer
from tests.utils.net import free_port, wait_until
from tests.utils.reference import assert_every_round_logged_once, assert_same_phi, serial_phi
from tests.utils.server import start_server, wait_for_round, wait_for_state

pytestmark = pytest.mark.faults


def test_an_mlflow_outage_degrades_tracking_but_not_training(tmp_path: Path) -> None:
    # many short rounds: the job outlasts the outage, the serial reference stays cheap (split:
    # in one actor these rounds would all be done before MLflow is down)
    body: dict[str, Any] = {"rounds": 2000, "meta_batch_size": 2, "eval_every": 0}
    body |= {"checkpoint_every": 200}
    body |= {"execution": "split"}
    body |= {"seed": 51}
    mlflow = MlflowServer(tmp_path / "mlflow", free_port())
    mlflow.start()
    try:
        server = start_server(tmp_path / "service", REPTILE_MLFLOW_TRACKING_URI=mlflow.url)
        try:
            with server.client() as client:
                job = client.post("/v1/jobs", json=body).json()
                record = wait_for_round(client, job["id"], 20)
                while record["mlflow"]["run_id"] is None:
                    record = wait_for_round(client, job["id"], record["round"] + 1)
                mlflow.stop()

                def degraded() -> bool:
                    nonlocal record
                    record = client.get(f"/v1/jobs/{job['id']}").json()
                    return record["mlflow"]["status"] == "degraded"

                wait_until(degraded, 60, "the job to report degraded tracking", every=0.05)
                assert record["state"] == "running" and record["mlflow"]["error"]
                wait_for_round(client, job["id"], record["round"] + 50)  # trains on, unlogged
                mlflow.start()
                done = wait_for_state(client, job["id"], {"succeeded", "failed"})
                assert done["state"] == "succeeded", done
                phi = load(client.get(f"/v1/jobs/{job['id']}/weights").content)
        finally:
            server.stop()
        run_id = done["mlflow"]["run_id"]

        def finished() -> bool:
            return MlflowClient(mlflow.url).get_run(run_id).info.status == "FINISHED"

        wait_until(finished, 120, "the buffered run to reach MLflow")
        assert_every_round_logged_once(mlflow.url, run_id, body["rounds"])
    finally:
        mlflow.stop()
    assert_same_phi(phi, serial_phi(body))
