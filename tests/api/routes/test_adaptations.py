"""Adaptations: sine and image bodies (JSON and multipart), validation, models:/ URIs, results."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from safetensors.torch import load

from service.adaptation_schemas import AdaptationCreate, ImageAdaptationCreate
from tests.utils.controller import PHI, InMemoryController
from tests.utils.factories import OMNIGLOT_JOB, SINE_JOB, b64, png, sine_task

UNKNOWN = "0" * 32


def _images(body: AdaptationCreate) -> tuple[list[bytes], list[str], list[bytes]]:
    """An image body's decoded support images, labels and query images."""
    assert isinstance(body, ImageAdaptationCreate)
    return body.support.images, body.support.labels, body.query.images


def _finished(client: TestClient, controller: InMemoryController, body: dict[str, Any]) -> str:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return controller.finish(response.json()["id"]).id


@pytest.fixture
def sine_job(client: TestClient, controller: InMemoryController) -> str:
    return _finished(client, controller, SINE_JOB)


@pytest.fixture
def image_job(client: TestClient, controller: InMemoryController) -> str:
    return _finished(client, controller, OMNIGLOT_JOB)


def test_a_sine_adaptation_is_created_with_its_location(
    client: TestClient, controller: InMemoryController, sine_job: str
) -> None:
    response = client.post(f"/v1/jobs/{sine_job}/adaptations", json=sine_task(steps=8, lr=0.1))
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/adaptations/{created['id']}"
    assert created["job_id"] == sine_job and created["round"] == 20 and created["model"] is None
    assert created["steps"] == 8 and created["lr"] == 0.1
    assert created["predictions"] == [3.0, 3.0]  # the stand-in predicts the support's mean
    assert client.get(response.headers["location"]).json() == created
    (adapted,) = controller.adapted
    body = adapted.body.model_dump()
    assert body["support"] == {"x": [0.0, 1.0, 2.0, 3.0, 4.0], "y": [-1.0, 1.0, 3.0, 5.0, 7.0]}
    assert body["query"] == {"x": [0.5, 1.5]}
    assert (adapted.body.steps, adapted.body.lr) == (8, 0.1)


def test_steps_and_lr_default_to_the_jobs(
    client: TestClient, controller: InMemoryController, sine_job: str
) -> None:
    response = client.post(f"/v1/jobs/{sine_job}/adaptations", json=sine_task())
    assert response.status_code == 201
    assert (controller.adapted[0].body.steps, controller.adapted[0].body.lr) == (None, None)
    assert response.json()["steps"] == 32 and response.json()["lr"] == 0.02  # eval_steps, inner_lr


IMAGE = [b64(png(0))]
INVALID_BODIES = [  # (the job to adapt, the body, where the error is, what it says)
    (
        "sine_job",
        sine_task(support={"x": [1.0, 2.0], "y": [1.0]}),
        ["body", "support"],
        "support.x has 2 points but support.y has 1",
    ),
    (
        "sine_job",
        sine_task(support={"x": [0.0] * 1001, "y": [0.0] * 1001}),
        ["body", "support", "x"],
        "at most 1000 items",
    ),
    ("sine_job", sine_task(support={"x": [], "y": []}), ["body", "support", "x"], "at least 1"),
    ("sine_job", {"support": sine_task()["support"]}, ["body", "query"], "Field required"),
    ("sine_job", sine_task(query={"x": ["a"]}), ["body", "query", "x", 0], "valid number"),
    ("sine_job", sine_task(steps=-1), ["body", "steps"], "greater than or equal to 0"),
    ("sine_job", sine_task(steps=1001), ["body", "steps"], "less than or equal to 1000"),
    ("sine_job", sine_task(steps="5"), ["body", "steps"], "valid integer"),  # strict JSON
    ("sine_job", sine_task(lr=0), ["body", "lr"], "greater than 0"),
    ("sine_job", sine_task(lr=101), ["body", "lr"], "less than or equal to 100"),
    ("sine_job", sine_task(stepz=3), ["body", "stepz"], "Extra inputs are not permitted"),
    (
        "image_job",
        {"support": {"images": ["%%%"], "labels": ["a"]}},
        ["body", "support", "images", 0],
        "invalid base64",
    ),
    (
        "image_job",
        {"support": {"images": [7], "labels": ["a"]}},
        ["body", "support", "images", 0],
        "base64 string",
    ),
    (
        "image_job",
        {"support": {"images": IMAGE * 2, "labels": ["a"]}},
        ["body", "support"],
        "2 support images but 1 labels",
    ),
    (
        "image_job",
        {"support": {"images": IMAGE, "labels": [""]}},
        ["body", "support", "labels", 0],
        "at least 1 character",
    ),
    ("image_job", sine_task(), ["body", "support", "images"], "Field required"),  # a sine body
]


@pytest.mark.parametrize(("job", "body", "loc", "message"), INVALID_BODIES)
def test_an_invalid_body_is_a_422_naming_the_field(
    request: pytest.FixtureRequest,
    client: TestClient,
    controller: InMemoryController,
    job: str,
    body: dict[str, Any],
    loc: list[str | int],
    message: str,
) -> None:
    job_id = request.getfixturevalue(job)
    response = client.post(f"/v1/jobs/{job_id}/adaptations", json=body)
    assert response.status_code == 422, response.text
    details = response.json()["detail"]
    assert any(d["loc"] == loc and message in d["msg"] for d in details), details
    assert controller.adapted == []


def test_non_finite_points_and_broken_json_are_a_422(
    client: TestClient, controller: InMemoryController, sine_job: str
) -> None:
    path = f"/v1/jobs/{sine_job}/adaptations"
    headers = {"content-type": "application/json"}
    body = b'{"support": {"x": [1, Infinity], "y": [0, 1]}, "query": {"x": [0]}}'
    response = client.post(path, content=body, headers=headers)
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "support", "x", 1] and detail["type"] == "finite_number"
    assert detail["input"] == "inf"  # repr'd: the answer itself stays strict JSON

    response = client.post(path, content=b"{not json", headers=headers)
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["type"] == "json_invalid" and detail["msg"].startswith("invalid JSON: ")
    assert controller.adapted == []


def test_an_image_adaptation_takes_base64_json(
    client: TestClient, controller: InMemoryController, image_job: str
) -> None:
    support, query = [png(0), png(100), png(200)], [png(50)]
    body = {
        "support": {"images": [b64(i) for i in support], "labels": ["a", "b", "c"]},
        "query": {"images": [b64(i) for i in query]},
    }
    response = client.post(f"/v1/jobs/{image_job}/adaptations", json=body)
    assert response.status_code == 201, response.text
    (prediction,) = response.json()["predictions"]
    assert prediction["label"] == "a" and prediction["probabilities"].keys() == {"a", "b", "c"}
    assert _images(controller.adapted[0].body) == (support, ["a", "b", "c"], query)


def test_a_multipart_upload_is_adapted_as_its_json_form(
    client: TestClient, controller: InMemoryController, image_job: str
) -> None:
    support, query = [png(0), png(100), png(200)], [png(50), png(150)]
    files = [("support", (f"s{i}.png", data, "image/png")) for i, data in enumerate(support)]
    files += [("query", (f"q{i}.png", data, "image/png")) for i, data in enumerate(query)]
    form = {"labels": ["x", "y", "z"], "steps": "30", "lr": "0.5"}  # form fields are text
    response = client.post(f"/v1/jobs/{image_job}/adaptations", files=files, data=form)
    assert response.status_code == 201, response.text
    assert response.json()["steps"] == 30 and len(response.json()["predictions"]) == 2
    (adapted,) = controller.adapted
    assert _images(adapted.body) == (support, ["x", "y", "z"], query)
    assert (adapted.body.steps, adapted.body.lr) == (30, 0.5)

    bad = client.post(f"/v1/jobs/{image_job}/adaptations", files=files, data={**form, "lr": "x"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "lr"]


def test_adapting_needs_a_job_with_weights(
    client: TestClient, controller: InMemoryController
) -> None:
    response = client.post(f"/v1/jobs/{UNKNOWN}/adaptations", json=sine_task())
    assert response.status_code == 404 and response.json() == {"detail": f"no job '{UNKNOWN}'"}
    queued = client.post("/v1/jobs", json=SINE_JOB).json()
    response = client.post(f"/v1/jobs/{queued['id']}/adaptations", json=sine_task())
    assert response.status_code == 409
    assert response.json() == {"detail": f"job {queued['id']} has no weights yet (it is queued)"}
    assert controller.adapted == []


def test_an_adaptation_that_cannot_be_stored_is_a_503(
    client: TestClient, controller: InMemoryController, sine_job: str
) -> None:
    controller.disk_full = True
    response = client.post(f"/v1/jobs/{sine_job}/adaptations", json=sine_task())
    assert response.status_code == 503
    assert response.json() == {
        "detail": "cannot store the adaptation: [Errno 28] No space left on device"
    }


def test_an_adaptation_and_its_weights_are_served(client: TestClient, sine_job: str) -> None:
    created = client.post(f"/v1/jobs/{sine_job}/adaptations", json=sine_task()).json()
    path = f"/v1/adaptations/{created['id']}/weights"
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-disposition"] == (
        f'attachment; filename="adaptation-{created["id"]}.safetensors"'
    )
    tensors = load(response.content)
    assert all(tensors[name].equal(PHI[name]) for name in PHI)
    as_json = client.get(path, params={"format": "json"}).json()
    assert as_json["round"] == 20 and as_json["tensors"]["layer.bias"]["values"] == [0.5, -1, 2]
    for missing in (f"/v1/adaptations/{UNKNOWN}", f"/v1/adaptations/{UNKNOWN}/weights"):
        response = client.get(missing)
        assert response.status_code == 404
        assert response.json() == {"detail": f"no adaptation '{UNKNOWN}'"}


def test_a_registered_model_is_adapted_by_its_uri(
    client: TestClient, controller: InMemoryController, sine_job: str
) -> None:
    response = client.post(
        "/v1/adaptations", json={**sine_task(), "model": "models:/reptile-sine@latest"}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert response.headers["location"] == f"/v1/adaptations/{created['id']}"
    assert created["model"] == "models:/reptile-sine/1" and created["job_id"] == sine_job
    assert controller.adapted[0].source.model == "models:/reptile-sine/1"

    response = client.post(
        "/v1/adaptations", json={**sine_task(), "model": "models:/reptile-sine/9"}
    )
    assert response.status_code == 404
    assert response.json() == {"detail": "no registered model version for models:/reptile-sine/9"}


@pytest.mark.parametrize(
    ("model", "error"),
    [
        ("models:/reptile-sine", "string_pattern_mismatch"),  # neither a version nor an alias
        ("runs:/0123/model", "string_pattern_mismatch"),
        ("models:/a/b/c", "string_pattern_mismatch"),
        (3, "string_type"),
        (None, "string_type"),
    ],
)
def test_a_bad_model_uri_is_a_422(
    client: TestClient, controller: InMemoryController, sine_job: str, model: Any, error: str
) -> None:
    response = client.post("/v1/adaptations", json={**sine_task(), "model": model})
    assert response.status_code == 422, response.text
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "model"] and detail["type"] == error, detail
    assert controller.adapted == []


def test_a_model_adaptation_needs_its_model(client: TestClient) -> None:
    response = client.post("/v1/adaptations", json=sine_task())
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "model"]
    assert response.json()["detail"][0]["type"] == "missing"
