"""`/healthz` and `/readyz`: open probes that show no secrets."""

from pathlib import Path

from fastapi.testclient import TestClient

from service.settings import Settings
from tests.utils.controller import api_client


def test_healthz_answers_ok(client: TestClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_readyz_reports_the_cluster_and_the_tracking_store(
    client: TestClient, settings: Settings
) -> None:
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ready",
        "ray_cpus": 0.0,  # no Ray in these tests
        "ray_gpus": 0.0,
        "tracking_uri": f"sqlite:///{settings.data_dir / 'mlflow.db'}",
    }


def test_readyz_masks_the_tracking_password(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri="http://reptile:s3cret@mlflow:5000/")
    with api_client(settings) as (client, _):
        response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["tracking_uri"] == "http://reptile:***@mlflow:5000/"
    assert "s3cret" not in response.text
