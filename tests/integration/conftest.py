"""One real local Ray for the integration tests (4 logical CPUs, so 3 actors fit on 2 cores)."""

from collections.abc import Iterator

import pytest

from workers.cluster import connect, disconnect


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    connect(None, num_cpus=4)
    yield
    disconnect()
