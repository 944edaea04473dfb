"""Bearer-token authentication through a real server started with REPTILE_API_TOKEN."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.utils.server import Server, start_server

TOKEN = "test-token-0123456789abcdef"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(  # a tracking URI with a password, never reached: a job stays degraded
        Path(tmp_path_factory.mktemp("auth")),
        REPTILE_API_TOKEN=TOKEN,
        REPTILE_MLFLOW_TRACKING_URI="http://reptile:s3cret@127.0.0.1:9/",
    )
    yield running
    running.stop()


def test_every_endpoint_but_health_and_docs_needs_the_token(server: Server) -> None:
    unknown = "0" * 32
    protected = [
        ("GET", "/v1/jobs"),
        ("POST", "/v1/jobs"),
        ("GET", f"/v1/jobs/{unknown}"),
        ("POST", f"/v1/jobs/{unknown}/cancel"),
        ("POST", f"/v1/jobs/{unknown}/resume"),
        ("GET", f"/v1/jobs/{unknown}/events"),
        ("GET", f"/v1/jobs/{unknown}/weights"),
        ("POST", f"/v1/jobs/{unknown}/adaptations"),
        ("GET", f"/v1/adaptations/{unknown}"),
        ("GET", f"/v1/adaptations/{unknown}/weights"),
    ]
    wrong = [
        {},
        {"Authorization": "Bearer wrong-token-0123456789abcdef"},
        {"Authorization": TOKEN},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Bearer"},
    ]
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for method, path in protected:
            for headers in wrong:
                # the body is never read: a malformed one is still a 401, not a 422
                response = client.request(method, path, headers=headers, content=b"{not json")
                assert response.status_code == 401, (method, path, headers, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert "bearer token" in response.json()["detail"]
        for path in ("/healthz", "/readyz", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path
        ready = client.get("/readyz").json()  # open, so it shows no password
        assert ready["tracking_uri"] == "http://reptile:***@127.0.0.1:9/"

        authorized = {"Authorization": f"Bearer {TOKEN}"}
        assert client.get("/v1/jobs", headers=authorized).json()["count"] == 0
        response = client.get(f"/v1/jobs/{unknown}", headers=authorized)
        assert response.status_code == 404
        lowercase = {"Authorization": f"bearer {TOKEN}"}  # the scheme is case-insensitive
        assert client.get("/v1/jobs", headers=lowercase).status_code == 200

        # job answers show the MLflow store as /readyz does, and no server paths
        job = {"rounds": 1, "num_workers": 1}
        answer = client.post("/v1/jobs", json=job, headers=authorized)
        assert answer.status_code == 202, answer.text
        for text in (answer.text, client.get("/v1/jobs", headers=authorized).text):
            assert "s3cret" not in text and "dataset" not in text
        assert answer.json()["mlflow"]["tracking_uri"] == "http://reptile:***@127.0.0.1:9/"
        client.post(f"/v1/jobs/{answer.json()['id']}/cancel", headers=authorized)
