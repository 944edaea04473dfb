"""`/metrics`: the controller's Prometheus registry, HTTP requests counted by route."""

from fastapi.testclient import TestClient

from tests.utils.controller import InMemoryController
from tests.utils.factories import SINE_JOB


def test_metrics_count_jobs_by_state_and_requests_by_route(
    client: TestClient, controller: InMemoryController
) -> None:
    for _ in range(2):
        assert client.post("/v1/jobs", json=SINE_JOB).status_code == 202
    controller.finish(controller.jobs()[0].id)
    assert client.get("/v1/jobs/unknown").status_code == 404
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    lines = response.text.splitlines()
    assert 'reptile_jobs{state="queued"} 1.0' in lines
    assert 'reptile_jobs{state="succeeded"} 1.0' in lines
    requests = "reptile_http_requests_total"
    assert f'{requests}{{method="POST",route="/v1/jobs",status="202"}} 2.0' in lines
    # by route template, not by path: one label set for every job id
    assert f'{requests}{{method="GET",route="/v1/jobs/{{job_id}}",status="404"}} 1.0' in lines
