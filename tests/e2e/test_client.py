"""The Python client and `GET /metrics` against a real server."""

import math
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load_file

from api.client import ReptileClient, ServiceError
from api.schemas import AdaptationPublic, JobPublic
from service.records import JobState
from service.specs import SineJobSpec
from tests.utils.server import Server

SMALL = {"rounds": 12, "meta_batch_size": 4, "eval_every": 6, "eval_tasks": 4, "num_workers": 1}
LONG = {**SMALL, "rounds": 100_000, "eval_every": 0, "checkpoint_every": 5}


def _scrape(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`GET /metrics`, parsed: {(sample name, sorted labels): value}."""
    response = httpx.get(f"{server.url}/metrics", timeout=30)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def test_a_job_from_submission_to_adapted_weights(server: Server, tmp_path: Path) -> None:
    with ReptileClient(server.url) as client:
        job = client.submit(SineJobSpec.model_validate({"name": "client-test", **SMALL}))
        assert isinstance(job, JobPublic) and job.state == JobState.queued
        assert job.spec.name == "client-test" and job.rounds == 12

        seen = list(client.events(job.id))
        assert seen[-1].state == JobState.succeeded and seen[-1].round == 12
        rounds = [record.round for record in seen]
        assert rounds == sorted(rounds)

        done = client.wait(job.id, timeout=30)
        assert done.state == JobState.succeeded and "eval_mse_after_32" in done.evaluation
        assert done.mlflow.run_id is not None
        assert job.id in {record.id for record in client.jobs()}

        phi = load_file(client.download_weights(job.id, tmp_path / "phi.safetensors"))
        assert phi["0.weight"].shape == (64, 1)

        xs = [-4.0, -2.0, 0.0, 1.0, 3.0]
        adapted = client.adapt_points(
            job.id, x=xs, y=[math.sin(x) for x in xs], query_x=[0.5, 2.0], steps=8, lr=0.02
        )
        assert isinstance(adapted, AdaptationPublic)
        assert adapted.job_id == job.id and adapted.steps == 8 and len(adapted.predictions) == 2
        assert client.adaptation(adapted.id) == adapted
        path = client.download_adaptation_weights(adapted.id, tmp_path / "adapted.safetensors")
        assert load_file(path).keys() == phi.keys()

    metrics = _scrape(server)
    assert metrics[("reptile_jobs", (("state", "succeeded"),))] >= 1
    assert metrics[("reptile_rounds_total", (("task", "sine"),))] >= 12
    assert metrics[("reptile_adaptation_seconds_count", (("task", "sine"),))] >= 1
    reads = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert metrics[("reptile_http_requests_total", reads)] >= 1


def test_a_running_job_in_metrics_then_cancelled_and_resumed(server: Server) -> None:
    with ReptileClient(server.url) as client:
        job = client.submit(LONG)
        running = next(r for r in client.events(job.id) if r.round >= 3)
        assert running.state == JobState.running
        with pytest.raises(TimeoutError, match="still running"):
            client.wait(job.id, timeout=0.5)

        metrics = _scrape(server)
        assert metrics[("reptile_jobs", (("state", "running"),))] >= 1
        labels = (("job_id", job.id), ("task", "sine"))
        assert metrics[("reptile_job_round", labels)] >= 3
        assert metrics[("reptile_job_tasks_per_second", labels)] > 0

        client.cancel(job.id)
        cancelled = client.wait(job.id, timeout=120)
        assert cancelled.state == JobState.cancelled
        assert ("reptile_job_round", labels) not in _scrape(server)

        assert client.resume(job.id).state == JobState.queued
        resumed = next(r for r in client.events(job.id) if r.round > cancelled.round)
        assert resumed.state == JobState.running
        client.cancel(job.id)
        assert client.wait(job.id, timeout=120).state == JobState.cancelled


def test_errors_carry_the_status_and_the_servers_detail(server: Server) -> None:
    with ReptileClient(server.url) as client:
        with pytest.raises(ServiceError) as missing:
            client.get("nope")
        assert missing.value.status == 404 and missing.value.detail == "no job 'nope'"
        assert str(missing.value) == "HTTP 404: no job 'nope'"

        with pytest.raises(ServiceError) as invalid:
            client.submit({"rounds": 0, "inner_stepz": 5})
        assert invalid.value.status == 422
        assert "rounds: Input should be greater than or equal to 1" in str(invalid.value)
        assert "inner_stepz: Extra inputs are not permitted" in str(invalid.value)

        with pytest.raises(ServiceError, match="no job 'nope'"):
            list(client.events("nope"))
        with pytest.raises(ServiceError) as unknown_adaptation:
            client.download_adaptation_weights("nope", Path("/nonexistent/never-written"))
        assert unknown_adaptation.value.status == 404

    with ReptileClient("http://127.0.0.1:1") as offline, pytest.raises(httpx.ConnectError):
        offline.jobs()
