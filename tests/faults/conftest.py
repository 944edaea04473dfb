"""Fault tests share one server whose round timeout is short enough to wait out a hung actor."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.server import Server, start_server

ROUND_TIMEOUT_S = 8  # above a fresh actor's start-up on a loaded 2-core machine
CHUNK_RETRIES = 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(
        Path(tmp_path_factory.mktemp("service")),
        REPTILE_ROUND_TIMEOUT_S=str(ROUND_TIMEOUT_S),
        REPTILE_CHUNK_RETRIES=str(CHUNK_RETRIES),
    )
    yield running
    running.stop()
