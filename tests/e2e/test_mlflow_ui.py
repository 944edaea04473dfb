"""A finished job's run in the MLflow UI, opened by headless Chromium from the job's own link.

`make test` installs Debian's `chromium` when it is missing and apt-get can be run as root;
without it these tests are skipped.
"""

import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from api.client import ReptileClient
from api.schemas import JobPublic
from service.records import JobState
from tests.utils.net import free_port, wait_until
from tests.utils.server import Server, start_server

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (`make test` installs it as root)"
)
JOB = {"name": "ui-test", "rounds": 12, "meta_batch_size": 4, "eval_every": 6, "eval_tasks": 4}
WINDOW = (1400, 1000)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("ui"))


@pytest.fixture(scope="module")
def mlflow_ui(data_dir: Path) -> Iterator[str]:
    """`mlflow server` (one worker) on the service's SQLite store and artifact folder.

    Started before the service: its port, picked free, is bound at once, before Ray's many
    processes take ephemeral ports of their own.
    """
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        *(sys.executable, "-m", "mlflow", "server", "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{data_dir / 'mlflow.db'}"),
        *("--default-artifact-root", (data_dir / "mlartifacts").as_uri()),
        *("--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1]),
    ]
    log = (data_dir / "mlflow-ui.log").open("wb")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )

    def healthy() -> bool:
        assert process.poll() is None, (data_dir / "mlflow-ui.log").read_text()
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(healthy, 300, "the MLflow UI to start", every=1)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the server and its uvicorn worker
        process.wait(timeout=60)
        log.close()


@pytest.fixture(scope="module")
def server(data_dir: Path, mlflow_ui: str) -> Iterator[Server]:
    """The service, told where the MLflow UI is so that job records link to it."""
    running = start_server(data_dir, REPTILE_MLFLOW_UI_URL=mlflow_ui)
    assert running.tracking_uri == f"sqlite:///{data_dir / 'mlflow.db'}"  # the UI's store
    yield running
    running.stop()


@pytest.fixture(scope="module")
def finished(server: Server) -> JobPublic:
    with ReptileClient(server.url) as client:
        job = client.submit(JOB)
        record = client.wait(job.id, timeout=300)
    assert record.state == JobState.succeeded, record.error
    return record


def _chromium(url: str, profile: Path, *args: str) -> str:
    """Headless Chromium on `url` until the page is idle; returns its stdout."""
    assert CHROMIUM is not None
    command = [
        CHROMIUM,
        *("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"),
        *("--disable-quic", "--no-first-run", "--disable-background-networking"),
        *("--disable-component-update", "--disable-sync", "--hide-scrollbars"),
        f"--user-data-dir={profile}",
        "--virtual-time-budget=30000",  # virtual time waits for the page's network requests
        f"--window-size={WINDOW[0]},{WINDOW[1]}",  # charts render only inside the window
        *args,
        url,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _text(dom: str) -> str:
    """The page's text, tags dropped and white space collapsed."""
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def test_the_job_link_opens_its_run_with_every_metric(
    finished: JobPublic, mlflow_ui: str, tmp_path: Path
) -> None:
    url = finished.mlflow.ui_url
    assert url is not None and url.startswith(f"{mlflow_ui}/#/experiments/")
    text = _text(_chromium(url, tmp_path / "profile", "--dump-dom"))
    assert "ui-test" in text and "Finished" in text and finished.id in text  # job_id tag
    names = [*finished.metrics, *finished.evaluation]
    assert f"Metrics ({len(names)})" in text
    for name in names:
        assert name in text, name


def test_the_job_link_asks_for_the_model_training_view(
    finished: JobPublic, mlflow_ui: str, tmp_path: Path
) -> None:
    url = finished.mlflow.ui_url or ""
    run_page, _, view = url.partition("?")
    assert view == "workflowType=machine_learning"
    # the experiment's page in that view lists its training runs, not the GenAI overview
    experiment = run_page.partition("/runs/")[0]
    text = _text(_chromium(f"{experiment}?{view}", tmp_path / "profile", "--dump-dom"))
    assert "Run Name" in text and "ui-test" in text
    assert "Observability" not in text


def _line_blue(screenshot: Path) -> int:
    """Pixels of the charts' saturated blue lines and markers (a page without charts has few)."""
    r, g, b = np.asarray(Image.open(screenshot).convert("RGB")).astype(int).transpose(2, 0, 1)
    return int(((b > 150) & (b - r > 80) & (b - g > 40)).sum())


def test_a_screenshot_of_the_runs_metric_charts(
    finished: JobPublic, mlflow_ui: str, tmp_path: Path
) -> None:
    run_page, _, view = (finished.mlflow.ui_url or "").partition("?")
    url = f"{run_page}/model-metrics?{view}"
    profile = tmp_path / "profile"
    names = sorted([*finished.metrics, *finished.evaluation])
    # charts load lazily (plotly); on a busy machine a first visit may still show spinners
    text = ""

    def charts_in_dom() -> bool:
        nonlocal text
        text = _text(_chromium(url, profile, "--dump-dom"))
        return names[0] in text  # the first chart's title, in alphabetical order

    wait_until(charts_in_dom, 300, "the first metric chart in the page", every=0)
    assert f"Model metrics ({len(names)})" in text

    screenshot = tmp_path / "model-metrics.png"

    def charts_drawn() -> bool:
        _chromium(url, profile, f"--screenshot={screenshot}")
        return _line_blue(screenshot) > 3000

    wait_until(charts_drawn, 300, f"metric charts drawn in {screenshot}", every=0)
    assert Image.open(screenshot).size == WINDOW
