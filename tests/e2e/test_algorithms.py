"""FOMAML and MAML jobs through a real server: trained to held-out scores far better than the
initialisation's, the algorithm an MLflow param of the run, the result adaptable like any job.

About a minute on two cores: two 200-round sine jobs (the unit and integration tests hold each
algorithm to its serial reference; this checks the served path learns).
"""

import math

import pytest
from mlflow import MlflowClient

from tests.utils.server import Server, wait_for_state


@pytest.mark.parametrize(
    "body",
    [{"algorithm": "fomaml", "tail_shots": 10}, {"algorithm": "maml", "tail_shots": 10}],
    ids=lambda body: body["algorithm"],
)
def test_a_fomaml_or_maml_sine_job_learns_through_the_server(
    server: Server, body: dict[str, object]
) -> None:
    with server.client() as client:
        job = client.post("/v1/jobs", json={**body, "rounds": 200, "eval_tasks": 16}).json()
        record = wait_for_state(client, job["id"], {"succeeded", "failed"}, timeout=600)
        assert record["state"] == "succeeded", record
        xs = [-4.0 + 0.8 * i for i in range(10)]
        adaptation = client.post(
            f"/v1/jobs/{job['id']}/adaptations",
            json={
                "support": {"x": xs, "y": [2 * math.sin(x + 1) for x in xs]},
                "query": {"x": [0.0]},
            },
        )
        assert adaptation.status_code == 201, adaptation.text
    mlflow = MlflowClient(server.tracking_uri)
    run_id = record["mlflow"]["run_id"]
    params = mlflow.get_run(run_id).data.params
    assert (params["algorithm"], params["tail_shots"]) == (body["algorithm"], "10")
    by_round = {m.step: m.value for m in mlflow.get_metric_history(run_id, "eval_mse_after_32")}
    # 10 shots, 32 SGD steps: ~2.4 from the random init; 200 rounds reach ~0.3–0.5 in process
    assert by_round[200] < 0.5 * by_round[0], by_round


def test_a_maml_job_without_a_query_set_is_refused_with_the_reason(server: Server) -> None:
    with server.client() as client:
        response = client.post("/v1/jobs", json={"algorithm": "maml"})
    assert response.status_code == 422
    assert "maml needs a query set: set tail_shots" in response.text
