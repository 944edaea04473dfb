"""The API in process, around an in-memory controller, on a fresh data dir per test."""

from collections.abc import Iterator
from pathlib import Path

import pytest
import ray
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.utils.controller import InMemoryController, api_client


@pytest.fixture(autouse=True)
def _no_ray() -> Iterator[None]:
    """These tests run no workers: any of them that started Ray would be testing the wrong
    thing (and take seconds)."""
    yield
    assert not ray.is_initialized(), "an API test started Ray"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path)


@pytest.fixture
def app(settings: Settings) -> Iterator[tuple[TestClient, InMemoryController]]:
    with api_client(settings) as app:
        yield app


@pytest.fixture
def client(app: tuple[TestClient, InMemoryController]) -> TestClient:
    return app[0]


@pytest.fixture
def controller(app: tuple[TestClient, InMemoryController]) -> InMemoryController:
    return app[1]
