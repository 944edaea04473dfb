"""`reptile serve` as the README starts it: the API with the MLflow UI beside it."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import psutil

from tests.utils.net import free_port, wait_until


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def test_stopping_the_service_stops_its_mlflow_ui_and_all_it_started(tmp_path: Path) -> None:
    api, ui = f"http://127.0.0.1:{free_port()}", free_port()
    environment = {
        **{k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "RAY_ADDRESS")},
        "REPTILE_DATA_DIR": str(tmp_path),
        "REPTILE_RAY_NUM_CPUS": "4",
    }
    command = [str(Path(sys.executable).with_name("reptile")), "serve", "--host", "127.0.0.1"]
    command += ["--port", api.rpartition(":")[2], "--ui-port", str(ui)]
    with (tmp_path / "serve.log").open("wb") as log:
        serve = subprocess.Popen(command, env=environment, stdout=log, stderr=subprocess.STDOUT)
    started: list[psutil.Process] = []
    try:
        wait_until(lambda: _answers(f"{api}/readyz"), 180, "the API to be ready")
        wait_until(lambda: _answers(f"http://127.0.0.1:{ui}/"), 180, "the MLflow UI to answer")
        (server,) = [
            child
            for child in psutil.Process(serve.pid).children()
            if "mlflow server" in " ".join(child.cmdline())
        ]
        started = [server, *server.children(recursive=True)]  # its web worker, and any more
        assert len(started) > 1
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=120) == 128 + signal.SIGTERM
        _, alive = psutil.wait_procs(started, timeout=60)
        assert not alive, [" ".join(p.cmdline()) for p in alive]
        assert not _answers(f"http://127.0.0.1:{ui}/")
    finally:
        if serve.poll() is None:
            serve.kill()
        for process in started:
            if process.is_running():
                process.kill()
