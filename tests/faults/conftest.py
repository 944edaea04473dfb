"""Fault tests share one server whose timeouts are short enough to wait out hung actors."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.server import Server, start_server

ROUND_TIMEOUT_S = 5  # a sine round takes milliseconds; actor start-up has its own deadline
START_TIMEOUT_S = 30
CHUNK_RETRIES = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        Path(tmp_path_factory.mktemp("service")),
        REPTILE_ROUND_TIMEOUT_S=str(ROUND_TIMEOUT_S),
        REPTILE_ACTOR_START_TIMEOUT_S=str(START_TIMEOUT_S),
        REPTILE_CHUNK_RETRIES=str(CHUNK_RETRIES),
    )
    yield running
    running.stop()
