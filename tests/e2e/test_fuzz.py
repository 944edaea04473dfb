"""Schemathesis against a real server: every operation, no 5xx, every answer as documented.

Generated job submissions are real jobs: the server runs one at a time (two pending at most,
the rest get 429), image jobs find no data under an empty data root, and every accepted job is
cancelled at once, so the fuzzing never loads the machine for long.
"""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from pydantic import SecretStr

from api.main import create_app
from service.settings import Settings
from tests.utils.server import Server, start_server

TOKEN = "fuzz-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = Path(tmp_path_factory.mktemp("fuzz"))
    (root / "data").mkdir()
    running = start_server(
        root / "service",
        REPTILE_API_TOKEN=TOKEN,
        REPTILE_DATA_ROOT=str(root / "data"),
        REPTILE_RAY_NUM_CPUS="2",
        REPTILE_MAX_CONCURRENT_JOBS="1",
        REPTILE_MAX_PENDING_JOBS="2",
    )
    yield running
    running.stop()


# Loaded from the app the server runs (same code, same token), so that pytest can list one test
# per operation; the first test checks that the server serves exactly this schema. The token is
# given as the schema's bearer scheme, so schemathesis also checks requests without it fail.
schema = schemathesis.openapi.from_dict(
    create_app(Settings(api_token=SecretStr(TOKEN))).openapi(),
    config=schemathesis.Config.from_dict({"auth": {"openapi": {"bearerAuth": {"bearer": TOKEN}}}}),
)


def test_the_server_serves_the_fuzzed_schema(server: Server) -> None:
    assert httpx.get(f"{server.url}/openapi.json").json() == schema.raw_schema


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    database=None,
    derandomize=True,  # the same examples on every run: a CI failure reproduces locally
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_every_operation_answers_as_documented(case: schemathesis.Case, server: Server) -> None:
    # Every check but "schema-valid input is accepted": a 422 also answers what a schema cannot
    # say (inner_batch_size ≤ examples per task, the work caps, workers ≤ the cluster's CPUs,
    # a data set that exists).
    response = case.call_and_validate(
        base_url=server.url, excluded_checks=[schemathesis.checks.positive_data_acceptance]
    )
    if case.path == "/v1/jobs" and case.method == "POST" and response.status_code == 202:
        job_id = response.json()["id"]
        httpx.post(f"{server.url}/v1/jobs/{job_id}/cancel", headers=AUTH, timeout=60)
