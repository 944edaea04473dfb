"""One real server per test module, on its own data directory."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.utils.server import Server, start_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = start_server(Path(tmp_path_factory.mktemp("service")))
    yield running
    running.stop()
