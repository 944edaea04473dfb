"""`/v1/sweeps`: what is refused before a sweep starts, with a message naming the cause."""

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.records import SweepRecord
from service.settings import Settings
from service.sweep_specs import SweepSpec
from tests.utils.controller import api_client
from tests.utils.images import image_folder_tree

UNKNOWN = "0" * 32
SWEEP: dict[str, Any] = {
    "base": {"rounds": 8, "eval_every": 2, "num_workers": 1},
    "space": {"inner_lr": {"grid": [0.02, 0.01]}},
    "trials": 2,
    "max_concurrent": 2,
}


def test_a_space_value_the_job_would_refuse_is_a_422_naming_the_field(client: TestClient) -> None:
    body = {**SWEEP, "space": {"inner_lr": {"loguniform": [1e-3, 200.0]}}}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body"]
    assert "space.inner_lr" in error["msg"] and "less than or equal to 100" in error["msg"]

    response = client.post("/v1/sweeps", json={**SWEEP, "space": {"inner_stepz": {"grid": [1]}}})
    assert response.status_code == 422
    assert "space.inner_stepz: not a field of a sine job" in response.text


def test_a_bad_base_job_is_a_422_at_its_field(client: TestClient) -> None:
    response = client.post("/v1/sweeps", json={**SWEEP, "base": {"rounds": 0}})
    assert response.status_code == 422
    assert ["body", "base", "sine", "rounds"] in [e["loc"] for e in response.json()["detail"]]


def test_sweeps_without_cpus_to_spare_are_refused_saying_why(client: TestClient) -> None:
    """Without REPTILE_SWEEP_CPUS, sweeps get the cluster's CPUs beyond the jobs' (none here)."""
    response = client.post("/v1/sweeps", json=SWEEP)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert "max_concurrent=2 trials of 2 CPUs" in detail and "REPTILE_SWEEP_CPUS" in detail


@pytest.mark.parametrize(
    ("limits", "expected"),
    [
        ({"max_sweep_trials": 1}, "trials=2 exceeds this service's limit of 1"),
        ({"max_sweep_rounds": 10}, "trials × base.rounds = 16 rounds exceeds"),
        ({"sweep_cpus": 3}, "need 4; sweeps may hold 3 CPUs here"),
    ],
)
def test_a_sweep_over_the_services_limits_is_a_422(
    settings: Settings, limits: dict[str, int], expected: str
) -> None:
    with api_client(settings.model_copy(update={"sweep_cpus": 4, **limits})) as (client, _):
        response = client.post("/v1/sweeps", json=SWEEP)
    assert response.status_code == 422, response.text
    assert expected in response.json()["detail"]


def test_unknown_sweeps_are_404s(client: TestClient) -> None:
    for path in (f"/v1/sweeps/{UNKNOWN}", f"/v1/sweeps/{UNKNOWN}/events", "/v1/sweeps/x"):
        response = client.get(path)
        assert response.status_code == 404, (path, response.text)
        assert "no sweep" in response.json()["detail"]
    for action in ("cancel", "resume"):
        assert client.post(f"/v1/sweeps/{UNKNOWN}/{action}").status_code == 404
    assert client.get("/v1/sweeps").json() == {"data": [], "count": 0}


def test_a_sweep_beyond_the_pending_limit_is_a_429(settings: Settings) -> None:
    """A queued sweep left on disk counts (the stand-in never starts sweeps, so it stays)."""
    queued = SweepRecord(id="1" * 32, spec=SweepSpec.model_validate(SWEEP))
    path = settings.data_dir / "sweeps" / queued.id / "record.json"
    path.parent.mkdir(parents=True)
    path.write_text(queued.model_dump_json())
    limited = settings.model_copy(update={"sweep_cpus": 4, "max_pending_sweeps": 1})
    with api_client(limited) as (client, _):
        response = client.post("/v1/sweeps", json=SWEEP)
        assert response.status_code == 429, response.text
        assert response.headers["retry-after"] == "60"
        assert "1 sweeps are queued or running" in response.json()["detail"]
        listed = client.get("/v1/sweeps").json()
        assert listed["count"] == 1 and listed["data"][0]["state"] == "queued"
        assert client.get(f"/v1/sweeps/{queued.id}").json()["trials"] == []


def test_an_image_sweep_whose_largest_queries_the_data_cannot_hold_is_a_422(
    settings: Settings, tmp_path: Path
) -> None:
    """The base fits the data set (4 images a class); a trial of 1 shot and 4 queries a class
    would not: refused at submission, not in a trial."""
    data = image_folder_tree(tmp_path / "folders", images_per_class=4)
    base = {
        "task": "image_folder",
        "data": str(data),
        "ways": 2,
        "shots": 1,
        "queries": 1,
        "eval_shots": [1],
        "inner_batch_size": 2,
        "rounds": 8,
        "eval_every": 2,
        "num_workers": 1,
    }
    body = {
        **SWEEP,
        "base": base,
        "space": {"queries": {"grid": [1, 4]}},
        "metric": "eval_acc_2w1s",
        "mode": "max",
    }
    with api_client(settings.model_copy(update={"sweep_cpus": 4})) as (client, _):
        response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail.startswith("space {'queries': 4}: base.data:"), detail
