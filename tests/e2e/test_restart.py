"""Job records and running jobs survive a restart of the server."""

import time
from pathlib import Path

from mlflow import MlflowClient
from safetensors.torch import load

from tests.utils.reference import assert_same_phi, serial_phi
from tests.utils.server import start_server, wait_for_state

LONG = {
    "rounds": 400,
    "meta_batch_size": 4,
    "eval_every": 200,
    "checkpoint_every": 20,
    "eval_tasks": 4,
    "seed": 9,
}


def test_restart_keeps_records_and_resumes_the_running_job(tmp_path: Path) -> None:
    first = start_server(tmp_path)
    try:
        with first.client() as client:
            short = client.post("/v1/jobs", json={"rounds": 5, "eval_every": 0}).json()
            short_done = wait_for_state(client, short["id"], {"succeeded"})
            long = client.post("/v1/jobs", json=LONG).json()
            wait_for_state(client, long["id"], {"running"})
            record = long
            while record["round"] < 40:
                time.sleep(0.1)
                record = client.get(f"/v1/jobs/{long['id']}").json()
            run_id = record["mlflow"]["run_id"]
    finally:
        first.stop()  # SIGTERM: the job stops at the end of its round, checkpointed

    second = start_server(tmp_path)
    try:
        with second.client() as client:
            assert client.get(f"/v1/jobs/{short['id']}").json() == short_done
            done = wait_for_state(client, long["id"], {"succeeded", "failed"})
            assert done["state"] == "succeeded", done
            assert done["mlflow"]["run_id"] == run_id  # the same MLflow run continues
            phi = load(client.get(f"/v1/jobs/{long['id']}/weights").content)
    finally:
        second.stop()

    assert_same_phi(phi, serial_phi(LONG))
    history = MlflowClient(second.tracking_uri).get_metric_history(run_id, "meta_loss_after")
    assert sorted({m.step for m in history}) == list(range(1, 401))
    assert MlflowClient(second.tracking_uri).get_run(run_id).info.status == "FINISHED"
