"""Limits through a real server: too much work, too many adaptations or jobs (oversized bodies:
tests/api/test_limits.py).

Each is a clear 4xx (429 with Retry-After where waiting helps), never an overloaded server.
"""

import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.utils.server import Server, start_server, wait_for_state

SMALL = {"rounds": 3, "meta_batch_size": 2, "eval_every": 0, "eval_tasks": 1, "num_workers": 1}
ENDLESS = {"rounds": 1_000_000, "meta_batch_size": 1, "eval_every": 0, "num_workers": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        Path(tmp_path_factory.mktemp("limits")),
        REPTILE_MAX_CONCURRENT_ADAPTATIONS="1",
        REPTILE_MAX_PENDING_JOBS="2",
    )
    yield running
    running.stop()


def test_specs_and_adaptations_bound_the_work_they_ask_for(server: Server) -> None:
    bad_jobs = [
        ({"meta_batch_size": 2000}, "less than or equal to 1024"),
        ({"inner_steps": 5000}, "less than or equal to 1000"),
        ({"eval_tasks": 5000}, "less than or equal to 1000"),
        ({"shots": 50_000}, "less than or equal to 1000"),
        ({"task": "omniglot", "data": "x", "eval_shots": [0]}, "greater than or equal to 1"),
        ({"task": "omniglot", "data": "x", "held_out": ["a" * 300]}, "at most 200 characters"),
        (
            {"task": "omniglot", "data": "x", "held_out": ["a" * 200] * 40},
            "held_out takes 8,160 characters as an MLflow param, over MLflow's limit of 6,000",
        ),
        (
            {"meta_batch_size": 1024, "inner_steps": 100, "inner_batch_size": 50},
            "5,120,000 example-steps exceeds this service's limit of 1,000,000",
        ),
        ({"eval_tasks": 1000, "eval_steps": 1000}, "an evaluation of eval_tasks × eval_steps"),
    ]
    with server.client() as client:
        for body, message in bad_jobs:
            response = client.post("/v1/jobs", json=body)
            assert response.status_code == 422, (body, response.text)
            assert message in response.text, (body, response.text)
        job = client.post("/v1/jobs", json=SMALL).json()
        wait_for_state(client, job["id"], {"succeeded"})
        response = client.post(
            f"/v1/jobs/{job['id']}/adaptations",
            json={"support": {"x": [0.0], "y": [0.0]}, "query": {"x": [0.0]}, "steps": 5000},
        )
        assert response.status_code == 422 and "less than or equal to 1000" in response.text
        xs = [-5 + i for i in range(11)]
        response = client.post(  # the largest step size, many steps: φ blows up
            f"/v1/jobs/{job['id']}/adaptations",
            json={
                "support": {"x": xs, "y": [5 * math.sin(x) for x in xs]},
                "query": {"x": [0.0]},
                "steps": 1000,
                "lr": 100,
            },
        )
        assert response.status_code == 422 and "the adaptation diverged" in response.text
        response = client.get(f"/v1/jobs/{job['id']}/weights", params={"fromat": "json"})
        assert response.status_code == 422 and "fromat" in response.text
        response = client.delete("/v1/jobs")
        assert response.status_code == 405 and response.headers["allow"] == "GET, POST"


def test_adaptations_beyond_the_concurrency_limit_get_a_429(server: Server) -> None:
    with server.client() as client:
        done = [j for j in client.get("/v1/jobs").json()["data"] if j["state"] == "succeeded"]
        path = f"/v1/jobs/{done[0]['id']}/adaptations"
    xs = [-5 + i / 100 for i in range(1000)]
    slow = {  # the largest adaptation allowed: 1000 steps on 1000 points, about a second
        "support": {"x": xs, "y": [math.sin(x) for x in xs]},
        "query": {"x": [0.0]},
        "steps": 1000,
    }

    def adapt(_: int) -> httpx.Response:
        with server.client() as client:
            return client.post(path, json=slow)

    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(adapt, range(6)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {201, 429}, [r.text for r in responses]
    busy = next(r for r in responses if r.status_code == 429)
    assert busy.headers["retry-after"] == "1"
    assert "1 adaptations are running, the limit of this service" in busy.json()["detail"]
    with server.client() as client:  # a slot frees as soon as an adaptation ends
        assert client.post(path, json={**slow, "steps": 1}).status_code == 201


def test_jobs_beyond_the_pending_limit_get_a_429(server: Server) -> None:
    with server.client() as client:
        first, second = (client.post("/v1/jobs", json=ENDLESS).json() for _ in range(2))
        refused = client.post("/v1/jobs", json=ENDLESS)
        assert refused.status_code == 429, refused.text
        assert refused.headers["retry-after"] == "60"
        assert "2 jobs are queued or running" in refused.json()["detail"]

        client.post(f"/v1/jobs/{first['id']}/cancel")
        wait_for_state(client, first["id"], {"cancelled"}, timeout=60)
        third = client.post("/v1/jobs", json=ENDLESS)
        assert third.status_code == 202, third.text
        response = client.post(f"/v1/jobs/{first['id']}/resume")  # would be a third again
        while response.status_code == 409 and "still stopping" in response.text:
            response = client.post(f"/v1/jobs/{first['id']}/resume")
        assert response.status_code == 429, response.text

        for job in (second, third.json()):
            client.post(f"/v1/jobs/{job['id']}/cancel")
            wait_for_state(client, job["id"], {"cancelled"}, timeout=60)
        assert client.get("/readyz").status_code == 200
