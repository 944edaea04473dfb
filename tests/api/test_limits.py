"""The service's limits: body size (413), pending jobs and concurrent adaptations (429)."""

from collections.abc import Iterator
from pathlib import Path

from service.settings import Settings
from tests.utils.controller import api_client
from tests.utils.factories import SINE_JOB, sine_task

MAX_BODY = 1024


def test_a_body_over_the_limit_is_a_413_declared_or_streamed(tmp_path: Path) -> None:
    too_big = b"x" * (MAX_BODY + 1)
    headers = {"content-type": "application/json"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(too_big), 256):
            yield too_big[start : start + 256]

    with api_client(Settings(data_dir=tmp_path, max_body_bytes=MAX_BODY)) as (client, controller):
        for content in (too_big, chunks()):
            response = client.post("/v1/jobs", content=content, headers=headers)
            assert response.status_code == 413, response.text
            assert response.json() == {
                "detail": f"request body exceeds the {MAX_BODY}-byte limit of this server"
            }
        # just under the limit, the body reaches validation as usual
        response = client.post("/v1/jobs", content=too_big[:-1], headers=headers)
        assert (
            response.status_code == 422 and response.json()["detail"][0]["type"] == "json_invalid"
        )
        assert controller.jobs() == []


def test_a_job_beyond_the_pending_limit_is_a_429_with_retry_after(tmp_path: Path) -> None:
    with api_client(Settings(data_dir=tmp_path, max_pending_jobs=2)) as (client, controller):
        first, _ = (client.post("/v1/jobs", json=SINE_JOB).json() for _ in range(2))
        refused = client.post("/v1/jobs", json=SINE_JOB)
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "60"
        assert refused.json() == {
            "detail": "2 jobs are queued or running, the limit of this service; "
            "retry when one has finished"
        }
        assert len(controller.jobs()) == 2

        assert client.post(f"/v1/jobs/{first['id']}/cancel").status_code == 202
        assert client.post("/v1/jobs", json=SINE_JOB).status_code == 202  # a slot freed
        resumed = client.post(f"/v1/jobs/{first['id']}/resume")  # would be a third again
        assert resumed.status_code == 429 and resumed.headers["retry-after"] == "60"


def test_an_adaptation_beyond_the_concurrency_limit_is_a_429(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_concurrent_adaptations=1)
    with api_client(settings) as (client, controller):
        job = controller.finish(client.post("/v1/jobs", json=SINE_JOB).json()["id"])
        path = f"/v1/jobs/{job.id}/adaptations"
        controller.adaptations_running = 1
        busy = client.post(path, json=sine_task())
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json() == {
            "detail": "1 adaptations are running, the limit of this service; retry in a moment"
        }
        controller.adaptations_running = 0
        assert client.post(path, json=sine_task()).status_code == 201
