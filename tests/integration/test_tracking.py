"""The MLflow tracker against real stores: a SQLite file, and a tracking server that is down."""

import subprocess
import sys
from pathlib import Path

import httpx
from mlflow import MlflowClient

from service.tracking import Tracker
from tests.utils.net import free_port, wait_until


def _tracker(uri: str, tmp_path: Path, artifacts: str | None) -> Tracker:
    return Tracker(
        tracking_uri=uri,
        experiment="reptile-test",
        artifact_location=artifacts,
        run_name="t",
        params={"rounds": 3, "inner_lr": 0.02},
        tags={"job_id": "x"},
        staging_dir=tmp_path / "staging",
        retry_seconds=0.2,
    )


def test_metrics_params_and_artifacts_reach_a_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = _tracker(uri, tmp_path, (tmp_path / "artifacts").as_uri())
    for step in range(1, 4):
        tracker.log_metrics({"meta_loss_after": 1.0 / step, "epsilon": 0.5}, step=step)
    tracker.log_artifact(b"first", "plots/fit.png")
    tracker.log_artifact(b"second", "plots/fit.png")  # redrawn: replaces the first
    assert tracker.finish("FINISHED")
    assert tracker.run is not None and not tracker.degraded
    client = MlflowClient(uri)
    run = client.get_run(tracker.run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"rounds": "3", "inner_lr": "0.02"}
    history = client.get_metric_history(run.info.run_id, "meta_loss_after")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    local = Path(client.download_artifacts(run.info.run_id, "plots/fit.png", str(tmp_path)))
    assert local.read_bytes() == b"second"
    assert not any((tmp_path / "staging").rglob("*.png"))  # staged copies cleaned up


def test_buffers_while_the_server_is_down_and_flushes_when_it_returns(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    tracker = _tracker(uri, tmp_path, None)
    for step in range(1, 6):
        tracker.log_metrics({"meta_loss_after": float(step)}, step=step)

    def save(directory: Path) -> None:  # any directory registers; the pyfunc is tested elsewhere
        directory.mkdir()
        (directory / "MLmodel").write_text("flavors: {}")

    tracker.register_model("outage-model", save, tags={"eval": "0.5"}, description="after")
    wait_until(lambda: tracker.degraded, 30, "the tracker to report degraded tracking")
    assert tracker.run is None and tracker.last_error and tracker.model is None
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "served"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: _up(uri), 120, "the MLflow server to start")
        assert tracker.finish("FINISHED", timeout=60)
        assert not tracker.degraded and tracker.run is not None
        history = MlflowClient(uri).get_metric_history(tracker.run.run_id, "meta_loss_after")
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
        assert tracker.model is not None and tracker.model.uri == "models:/outage-model/1"
        version = MlflowClient(uri).get_model_version("outage-model", "1")
        assert version.run_id == tracker.run.run_id and version.tags == {"eval": "0.5"}
    finally:
        server.terminate()
        server.wait(30)


def _up(uri: str) -> bool:
    try:
        return httpx.get(f"{uri}/health", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
