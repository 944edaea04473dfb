"""The model registry through real servers: a succeeded job's φ is registered and served by URI,
also by a second server that never saw the job."""

from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient
from safetensors.torch import load

from tests.utils.server import Server, start_server, wait_for_state

JOB = {"rounds": 20, "meta_batch_size": 4, "eval_every": 0, "eval_tasks": 4, "seed": 3}
TASK = {
    "support": {"x": [-4.0, -2.0, 0.0, 1.0, 3.0], "y": [1.2, -0.8, 0.3, 1.1, -0.4]},
    "query": {"x": [-1.0, 0.5, 2.0]},
    "steps": 16,
}


@pytest.fixture(scope="module")
def job(server: Server) -> dict[str, Any]:
    with server.client() as client:
        response = client.post("/v1/jobs", json=JOB)
        assert response.status_code == 202, response.text
        record = wait_for_state(client, response.json()["id"], {"succeeded", "failed"})
    assert record["state"] == "succeeded", record
    return record


def test_a_succeeded_job_is_registered_with_its_final_metrics(
    server: Server, job: dict[str, Any]
) -> None:
    mlflow = job["mlflow"]
    assert mlflow["model_uri"] == "models:/reptile-sine/1" and mlflow["model_version"] == "1"
    client = MlflowClient(server.tracking_uri)
    version = client.get_model_version("reptile-sine", "1")
    assert version.run_id == mlflow["run_id"]
    assert version.tags["job_id"] == job["id"] and version.tags["round"] == "20"
    final = float(version.tags["eval_mse_after_32"])
    assert final == pytest.approx(job["evaluation"]["eval_mse_after_32"], rel=1e-5)
    assert str(client.get_model_version_by_alias("reptile-sine", "latest").version) == "1"
    logged = {a.path for a in client.list_artifacts(mlflow["run_id"], "model")}
    assert {"model/MLmodel", "model/artifacts", "model/registry_model.py"} <= logged


def test_a_registered_model_adapts_like_its_job(server: Server, job: dict[str, Any]) -> None:
    with server.client() as client:
        from_job = client.post(f"/v1/jobs/{job['id']}/adaptations", json=TASK)
        assert from_job.status_code == 201, from_job.text
        response = client.post(
            "/v1/adaptations", json={**TASK, "model": "models:/reptile-sine@latest"}
        )
        assert response.status_code == 201, response.text
        created = response.json()
        assert response.headers["location"] == f"/v1/adaptations/{created['id']}"
        assert created["model"] == "models:/reptile-sine/1"
        assert created["job_id"] == job["id"] and created["round"] == 20
        assert created["predictions"] == from_job.json()["predictions"]
        assert client.get(response.headers["location"]).json() == created
        weights = client.get(f"/v1/adaptations/{created['id']}/weights")
        assert weights.status_code == 200 and load(weights.content)["0.weight"].shape == (64, 1)


def test_a_registered_model_outlives_its_server(
    server: Server, job: dict[str, Any], tmp_path: Path
) -> None:
    with server.client() as client:
        expected = client.post(f"/v1/jobs/{job['id']}/adaptations", json=TASK).json()
    server.stop()
    # a fresh data directory: no job records, weights or datasets, only the shared MLflow store
    second = start_server(tmp_path / "second", REPTILE_MLFLOW_TRACKING_URI=server.tracking_uri)
    try:
        with second.client() as client:
            assert client.get("/v1/jobs").json()["count"] == 0
            for model in ("models:/reptile-sine/1", "models:/reptile-sine@latest"):
                response = client.post("/v1/adaptations", json={**TASK, "model": model})
                assert response.status_code == 201, response.text
                assert response.json()["predictions"] == expected["predictions"]
            _registry_misses_are_clear_4xx(client)
    finally:
        second.stop()


def _registry_misses_are_clear_4xx(client: Any) -> None:
    for model in ("models:/nope@latest", "models:/reptile-sine/9", "models:/reptile-sine@gone"):
        response = client.post("/v1/adaptations", json={**TASK, "model": model})
        assert response.status_code == 404, (model, response.text)
        assert model in response.json()["detail"], response.text
    for malformed in ("reptile-sine", "models:/reptile-sine", "models:/a/b/c", "runs:/x/model", 3):
        response = client.post("/v1/adaptations", json={**TASK, "model": malformed})
        assert response.status_code == 422, (malformed, response.text)
        assert response.json()["detail"][0]["loc"] == ["body", "model"], response.text
    response = client.post("/v1/adaptations", json=TASK)
    assert response.status_code == 422 and "Field required" in response.text
    response = client.post(  # the body is validated against the model's task family
        "/v1/adaptations",
        json={"model": "models:/reptile-sine/1", "support": {"images": [], "labels": []}},
    )
    assert response.status_code == 422, response.text
    assert ["body", "support", "x"] in [error["loc"] for error in response.json()["detail"]]
    response = client.post("/v1/jobs", json={"model_name": "no/slashes"})
    assert response.status_code == 422 and "model_name" in response.text
