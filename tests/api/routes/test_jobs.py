"""`/v1/jobs`: submission, validation, the job answer, cancel/resume, weights and events."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load

from service.records import JobState
from service.settings import Settings
from tests.utils.controller import PHI, InMemoryController, api_client
from tests.utils.factories import OMNIGLOT_JOB, SINE_JOB
from tests.utils.server import events

UNKNOWN = "0" * 32


def _submitted(client: TestClient, body: dict[str, Any] = SINE_JOB) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


def test_a_submission_is_accepted_with_its_location_and_the_queued_job(
    client: TestClient, controller: InMemoryController
) -> None:
    response = client.post("/v1/jobs", json={**SINE_JOB, "inner_lr": 0.05})
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["round"] == 0 and job["rounds"] == 20
    assert job["error"] is None and job["mlflow"]["run_id"] is None
    spec = job["spec"]
    assert spec["task"] == "sine" and spec["meta_batch_size"] == 4 and spec["seed"] == 7
    assert spec["inner_lr"] == 0.05 and spec["inner_steps"] == 5  # given, and defaulted
    assert client.get(response.headers["location"]).json()["id"] == job["id"]
    assert [record.id for record in controller.jobs()] == [job["id"]]


def test_the_job_list_has_every_job_and_its_count(client: TestClient) -> None:
    ids = {_submitted(client)["id"] for _ in range(3)}
    listed = client.get("/v1/jobs").json()
    assert listed["count"] == 3 and {job["id"] for job in listed["data"]} == ids


@pytest.mark.parametrize(
    ("body", "loc", "error"),
    [
        ({"inner_stepz": 5}, ["body", "sine", "inner_stepz"], "extra_forbidden"),
        ({"rounds": "5"}, ["body", "sine", "rounds"], "int_type"),  # strict: no coercion
        ({"rounds": True}, ["body", "sine", "rounds"], "int_type"),
        ({"inner_lr": "0.1"}, ["body", "sine", "inner_lr"], "float_type"),
        ({"compile_inner_loop": 1}, ["body", "sine", "compile_inner_loop"], "bool_type"),
        ({"inner_steps": 0}, ["body", "sine", "inner_steps"], "greater_than_equal"),
        ({"inner_optimizer": "rmsprop"}, ["body", "sine", "inner_optimizer"], "literal_error"),
        ({"task": "imagenet"}, ["body"], "union_tag_invalid"),
        ({"task": "omniglot"}, ["body", "omniglot", "data"], "missing"),  # an image job's data
        ({**OMNIGLOT_JOB, "held_out": ["a" * 201]}, ["body", "omniglot", "held_out", 0], None),
    ],
)
def test_an_invalid_job_is_a_422_naming_the_field(
    client: TestClient, body: dict[str, Any], loc: list[str | int], error: str | None
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == loc, detail
    if error is not None:
        assert detail["type"] == error, detail
    assert client.get("/v1/jobs").json()["count"] == 0


def test_a_rule_across_fields_is_a_422_saying_why(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"shots": 4, "inner_batch_size": 8})
    assert response.status_code == 422
    assert (
        "inner_batch_size (8) cannot exceed the 4 examples" in response.json()["detail"][0]["msg"]
    )


def test_a_job_the_cluster_cannot_hold_is_a_422_with_the_controllers_message(
    client: TestClient, controller: InMemoryController
) -> None:
    controller.cluster_cpus = 2
    response = client.post("/v1/jobs", json={"num_workers": 3})
    assert response.status_code == 422
    assert response.json() == {"detail": "num_workers=3 needs 3 CPUs; the Ray cluster has 2"}


def test_a_job_that_cannot_be_stored_is_a_503(
    client: TestClient, controller: InMemoryController
) -> None:
    controller.disk_full = True
    response = client.post("/v1/jobs", json=SINE_JOB)
    assert response.status_code == 503
    assert response.json() == {"detail": "cannot store the job: [Errno 28] No space left on device"}
    assert controller.jobs() == []


def test_unknown_jobs_are_a_404_on_every_route(client: TestClient) -> None:
    for method, path in [
        ("GET", f"/v1/jobs/{UNKNOWN}"),
        ("POST", f"/v1/jobs/{UNKNOWN}/cancel"),
        ("POST", f"/v1/jobs/{UNKNOWN}/resume"),
        ("GET", f"/v1/jobs/{UNKNOWN}/weights"),
        ("GET", f"/v1/jobs/{UNKNOWN}/events"),
    ]:
        response = client.request(method, path)
        assert response.status_code == 404, (path, response.text)
        assert response.json() == {"detail": f"no job '{UNKNOWN}'"}, path


def test_cancel_and_resume_follow_the_job_state(client: TestClient) -> None:
    job = _submitted(client)
    path = f"/v1/jobs/{job['id']}"
    resumed = client.post(f"{path}/resume")
    assert resumed.status_code == 409
    assert resumed.json() == {
        "detail": f"job {job['id']} is queued; only cancelled or failed jobs resume"
    }

    cancelled = client.post(f"{path}/cancel")
    assert cancelled.status_code == 202 and cancelled.json()["state"] == "cancelled"
    again = client.post(f"{path}/cancel")
    assert again.status_code == 409
    assert again.json() == {"detail": f"job {job['id']} is already cancelled"}

    resumed = client.post(f"{path}/resume")
    assert resumed.status_code == 202 and resumed.json()["state"] == "queued"
    assert client.get(path).json()["state"] == "queued"


def test_a_finished_job_shows_what_a_user_follows(
    client: TestClient, controller: InMemoryController, settings: Settings
) -> None:
    done = controller.finish(_submitted(client)["id"])
    failed = controller.finish(_submitted(client)["id"], JobState.failed, "FloatingPointError: x")
    job = client.get(f"/v1/jobs/{done.id}").json()
    assert job["state"] == "succeeded" and job["round"] == job["rounds"] == 20
    assert job["error"] is None and job["metrics"] == {"meta_loss_after": 0.25}
    run_id = job["mlflow"]["run_id"]
    assert run_id == done.mlflow.run_id
    assert job["mlflow"]["ui_url"] == (
        f"{settings.mlflow_ui_url}/#/experiments/1/runs/{run_id}?workflowType=machine_learning"
    )
    assert job["mlflow"]["model_uri"] == "models:/reptile-sine/1"
    job = client.get(f"/v1/jobs/{failed.id}").json()
    assert job["state"] == "failed" and job["error"] == "FloatingPointError: x"
    assert job["round"] == 10


def test_a_job_answer_shows_no_server_path_nor_the_tracking_password(tmp_path: Any) -> None:
    settings = Settings(data_dir=tmp_path, mlflow_tracking_uri="http://reptile:s3cret@mlflow:5000")
    with api_client(settings) as (client, _):
        job = _submitted(client, OMNIGLOT_JOB)
        answer = client.get(f"/v1/jobs/{job['id']}")
    assert answer.status_code == 200
    assert "s3cret" not in answer.text
    assert answer.json()["mlflow"].get("tracking_uri") in (None, "http://reptile:***@mlflow:5000")
    assert answer.json().get("dataset") is None and str(tmp_path) not in answer.text


def test_weights_are_safetensors_or_json(
    client: TestClient, controller: InMemoryController
) -> None:
    job = _submitted(client)
    path = f"/v1/jobs/{job['id']}/weights"
    none_yet = client.get(path)
    assert none_yet.status_code == 409
    assert none_yet.json() == {"detail": f"job {job['id']} has no weights yet (it is queued)"}

    controller.finish(job["id"])
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"] == (
        f'attachment; filename="job-{job["id"]}.safetensors"'
    )
    tensors = load(response.content)
    assert tensors.keys() == PHI.keys()
    assert all(tensors[name].equal(PHI[name]) for name in PHI)

    as_json = client.get(path, params={"format": "json"})
    assert as_json.status_code == 200 and as_json.headers["content-type"] == "application/json"
    assert as_json.json() == {
        "round": 20,
        "tensors": {
            "layer.weight": {"shape": [3, 2], "values": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]},
            "layer.bias": {"shape": [3], "values": [0.5, -1.0, 2.0]},
        },
    }
    wrong = client.get(path, params={"format": "xml"})
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["query", "format"]


def test_an_unknown_query_parameter_is_a_422(
    client: TestClient, controller: InMemoryController
) -> None:
    job = controller.finish(_submitted(client)["id"])
    for path in (f"/v1/jobs/{job.id}/weights", "/v1/jobs"):
        response = client.get(path, params={"fromat": "json"})
        assert response.status_code == 422, path
        assert response.json()["detail"] == [
            {
                "type": "extra_forbidden",
                "loc": ["query", "fromat"],
                "msg": "Extra inputs are not permitted",
                "input": "json",
                "ctx": None,
            }
        ]


def test_the_event_stream_of_a_finished_job_ends_with_end(
    client: TestClient, controller: InMemoryController
) -> None:
    job = controller.finish(_submitted(client)["id"])
    seen = list(events(client, f"/v1/jobs/{job.id}/events", timeout=10))
    assert seen[-1] == ("end", {"id": job.id, "state": "succeeded"})
    (progress,) = [data for event, data in seen if event == "progress"]
    assert progress["id"] == job.id and progress["state"] == "succeeded"
    assert progress["round"] == 20
