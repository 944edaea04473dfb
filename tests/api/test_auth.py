"""Bearer-token authentication (`api_token`): every route but the probes and the docs."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.settings import Settings
from tests.utils.controller import InMemoryController, api_client
from tests.utils.factories import SINE_JOB

TOKEN = "test-token-0123456789abcdef"
UNKNOWN = "0" * 32
PROTECTED = [
    ("GET", "/v1/jobs"),
    ("POST", "/v1/jobs"),
    ("GET", f"/v1/jobs/{UNKNOWN}"),
    ("POST", f"/v1/jobs/{UNKNOWN}/cancel"),
    ("POST", f"/v1/jobs/{UNKNOWN}/resume"),
    ("GET", f"/v1/jobs/{UNKNOWN}/events"),
    ("GET", f"/v1/jobs/{UNKNOWN}/weights"),
    ("POST", f"/v1/jobs/{UNKNOWN}/adaptations"),
    ("POST", "/v1/adaptations"),
    ("GET", f"/v1/adaptations/{UNKNOWN}"),
    ("GET", f"/v1/adaptations/{UNKNOWN}/weights"),
    ("GET", "/metrics"),
]
WRONG = [
    {},
    {"Authorization": "Bearer wrong-token-0123456789abcdef"},
    {"Authorization": TOKEN},
    {"Authorization": f"Basic {TOKEN}"},
    {"Authorization": f"Bearer {TOKEN}x"},
    {"Authorization": "Bearer"},
]


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[tuple[TestClient, InMemoryController]]:
    with api_client(Settings(data_dir=tmp_path, api_token=SecretStr(TOKEN))) as app:
        yield app


@pytest.mark.parametrize(("method", "path"), PROTECTED)
def test_a_request_without_the_token_is_a_401_before_its_body_is_read(
    secured: tuple[TestClient, InMemoryController], method: str, path: str
) -> None:
    client, controller = secured
    for headers in WRONG:
        # a malformed body is still a 401, not a 422: nothing is learnt without the token
        response = client.request(method, path, headers=headers, content=b"{not json")
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json() == {
            "detail": "missing or invalid bearer token (Authorization: Bearer <token>)"
        }
    assert controller.jobs() == []


def test_the_token_opens_every_route(secured: tuple[TestClient, InMemoryController]) -> None:
    client, _ = secured
    for scheme in ("Bearer", "bearer"):  # the scheme is case-insensitive
        headers = {"Authorization": f"{scheme} {TOKEN}"}
        assert client.post("/v1/jobs", json=SINE_JOB, headers=headers).status_code == 202
        assert client.get("/v1/jobs", headers=headers).json()["count"] in (1, 2)
        assert client.get(f"/v1/jobs/{UNKNOWN}", headers=headers).status_code == 404


def test_the_probes_and_the_docs_stay_open(
    secured: tuple[TestClient, InMemoryController],
) -> None:
    client, _ = secured
    for path in ("/healthz", "/readyz", "/openapi.json", "/docs", "/redoc"):
        response = client.get(path)
        assert response.status_code == 200, path
    assert client.get("/healthz").json() == {"status": "ok"}


def test_the_openapi_schema_declares_the_bearer_scheme(
    secured: tuple[TestClient, InMemoryController],
) -> None:
    client, _ = secured
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "REPTILE_API_TOKEN",
    }
    assert schema["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    assert schema["paths"]["/readyz"]["get"]["security"] == []
    jobs = schema["paths"]["/v1/jobs"]["post"]
    assert "security" not in jobs and "401" in jobs["responses"]


def test_without_a_token_nothing_asks_for_one(client: TestClient) -> None:
    assert client.get("/v1/jobs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "security" not in schema and "securitySchemes" not in schema["components"]
