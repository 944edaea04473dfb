"""Error answers: JSON bodies of one shape, strict JSON even for non-finite input, 405s."""

import json
from typing import Any

from fastapi.testclient import TestClient

from api.schemas import FieldErrors
from tests.utils.controller import InMemoryController
from tests.utils.factories import SINE_JOB


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} in an answer: not JSON")

    return json.loads(text, parse_constant=refuse)


def test_a_validation_error_lists_each_field_at_fault(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"rounds": 0, "inner_stepz": 5})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/json"
    errors = FieldErrors.model_validate(response.json())  # the documented shape
    assert {(e.type, tuple(e.loc)) for e in errors.detail} == {
        ("greater_than_equal", ("body", "sine", "rounds")),
        ("extra_forbidden", ("body", "sine", "inner_stepz")),
    }


def test_a_non_finite_input_is_named_in_strict_json(client: TestClient) -> None:
    for body in (b'{"inner_lr": NaN}', b'{"outer_lr": -Infinity}'):
        response = client.post(
            "/v1/jobs", content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422
        (detail,) = _strict_json(response.text)["detail"]
        assert detail["type"] == "finite_number" and detail["input"] in ("nan", "-inf")


def test_a_body_that_is_not_json_is_a_422(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_a_wrong_method_is_a_405_listing_the_paths_methods(
    client: TestClient, controller: InMemoryController
) -> None:
    response = client.delete("/v1/jobs")
    assert response.status_code == 405 and response.headers["allow"] == "GET, POST"
    assert response.json() == {"detail": "Method Not Allowed"}
    job = client.post("/v1/jobs", json=SINE_JOB).json()
    response = client.put(f"/v1/jobs/{job['id']}")
    assert response.status_code == 405 and response.headers["allow"] == "GET"
    assert [record.state for record in controller.jobs()] == ["queued"]


def test_an_unknown_path_is_a_json_404(client: TestClient) -> None:
    response = client.get("/v2/jobs")
    assert response.status_code == 404 and response.json() == {"detail": "Not Found"}
