"""The app's lifespan: one controller, built from the settings, started and shut down."""

from pathlib import Path

from service.settings import Settings
from tests.utils.controller import api_client


def test_the_app_starts_its_controller_and_shuts_it_down(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, max_pending_jobs=3)
    with api_client(settings) as (client, controller):
        assert controller.started and not controller.stopped
        assert controller.settings is settings
        assert client.get("/v1/jobs").json() == {"data": [], "count": 0}
    assert controller.stopped
