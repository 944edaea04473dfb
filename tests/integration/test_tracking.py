"""The MLflow tracker against real stores: a SQLite file, and a tracking server that is down."""

import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from service.run_writer import EXPERIMENT_KIND_TAG, RunWriter
from service.tracking import RunRef, Tracker
from tests.utils.mlflow_server import MlflowServer
from tests.utils.net import free_port, wait_until


def _tracker(
    uri: str, tmp_path: Path, artifacts: str | None, run: RunRef | None = None, **options: Any
) -> Tracker:
    arguments: dict[str, Any] = {
        "experiment": "reptile-test",
        "params": {"rounds": 3, "inner_lr": 0.02},
    }
    writer = RunWriter(
        tracking_uri=uri,
        artifact_location=artifacts,
        run_name="t",
        tags={"job_id": "x"},
        retry_seconds=0.2,
        run=run,
        **(arguments | options),
    )
    return Tracker(writer, tmp_path / "staging")


def _save(directory: Path) -> None:  # any directory registers; the pyfunc is tested elsewhere
    directory.mkdir()
    (directory / "MLmodel").write_text("flavors: {}")


def test_metrics_params_and_artifacts_reach_a_sqlite_store(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = _tracker(uri, tmp_path, (tmp_path / "artifacts").as_uri())
    for step in range(1, 4):
        tracker.log_metrics({"meta_loss_after": 1.0 / step, "epsilon": 0.5}, step=step)
    tracker.log_artifact(b"first", "plots/fit.png")
    tracker.log_artifact(b"second", "plots/fit.png")  # redrawn: replaces the first
    tracker.set_tag("ray_nodes", "a,b")
    assert tracker.finish("FINISHED")
    assert tracker.run is not None and not tracker.degraded
    client = MlflowClient(uri)
    run = client.get_run(tracker.run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"rounds": "3", "inner_lr": "0.02"}
    assert run.data.tags["ray_nodes"] == "a,b" and run.data.tags["job_id"] == "x"
    history = client.get_metric_history(run.info.run_id, "meta_loss_after")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    local = Path(client.download_artifacts(run.info.run_id, "plots/fit.png", str(tmp_path)))
    assert local.read_bytes() == b"second"
    assert not any((tmp_path / "staging").rglob("*.png"))  # staged copies cleaned up


def test_figures_are_drawn_off_the_callers_thread_and_only_the_latest_per_path(
    tmp_path: Path,
) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = _tracker(uri, tmp_path, (tmp_path / "artifacts").as_uri())
    drawn: list[tuple[str, str]] = []  # (figure, thread)
    busy = threading.Event()

    def figure(name: str) -> Callable[[], bytes]:
        def draw() -> bytes:
            drawn.append((name, threading.current_thread().name))
            if name == "slow":
                assert busy.wait(30)
            if name == "broken":
                raise ValueError("no data to plot")
            return name.encode()

        return draw

    tracker.log_figure(figure("slow"), "plots/curve.png")
    wait_until(lambda: bool(drawn), 30, "the first figure to be drawn")
    tracker.log_figure(figure("old"), "plots/fit.png")  # replaced before its turn: never drawn
    tracker.log_figure(figure("broken"), "plots/broken.png")
    tracker.log_figure(figure("new"), "plots/fit.png")
    tracker.log_metrics({"eval_mse": 0.5}, step=1)
    assert not tracker.flush(timeout=0.5)  # still drawing the first
    busy.set()
    assert tracker.flush()
    assert [name for name, _ in drawn] == ["slow", "broken", "new"]
    assert tracker.finish("FINISHED") and tracker.run is not None
    assert {thread for _, thread in drawn} == {"mlflow-t"}
    client = MlflowClient(uri)
    run_id = tracker.run.run_id
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == [
        "plots/curve.png",
        "plots/fit.png",
    ]
    local = Path(client.download_artifacts(run_id, "plots", str(tmp_path / "down")))
    assert (local / "fit.png").read_bytes() == b"new"
    assert [m.value for m in client.get_metric_history(run_id, "eval_mse")] == [0.5]


def test_a_crashed_trackers_journal_is_replayed_once_and_not_relogged(tmp_path: Path) -> None:
    """A killed controller's metrics reach MLflow from the journal; re-run rounds add nothing."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _tracker(uri, tmp_path, None)
    for step in range(1, 4):
        first.log_metrics({"meta_loss_after": float(step)}, step=step)
    assert first.finish(None) and first.run is not None
    # the crash: MLflow's progress marker never written, half a line appended
    (tmp_path / "staging" / "metrics.applied").unlink()
    with (tmp_path / "staging" / "metrics.jsonl").open("a") as journal:
        journal.write('[["meta_loss_after", 9.0')
    second = _tracker(uri, tmp_path, None, run=first.run)
    for step in range(2, 6):  # resumed from a checkpoint at round 1: rounds 2-3 run again
        second.log_metrics({"meta_loss_after": float(step) + 0.5}, step=step)
    assert second.finish("FINISHED")
    assert second.run == first.run
    history = MlflowClient(uri).get_metric_history(first.run.run_id, "meta_loss_after")
    assert sorted((m.step, m.value) for m in history) == [
        (1, 1.0),
        (2, 2.0),
        (3, 3.0),
        (4, 4.5),
        (5, 5.5),
    ]


def test_buffers_while_the_server_is_down_and_flushes_when_it_returns(tmp_path: Path) -> None:
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    tracker = _tracker(uri, tmp_path, None)
    for step in range(1, 6):
        tracker.log_metrics({"meta_loss_after": float(step)}, step=step)

    tracker.register_model("outage-model", _save, tags={"eval": "0.5"}, description="after")
    wait_until(lambda: tracker.degraded, 30, "the tracker to report degraded tracking")
    assert tracker.run is None and tracker.last_error and tracker.model is None
    server = MlflowServer(tmp_path / "server", port)
    try:
        server.start()
        assert tracker.finish("FINISHED", timeout=60)
        assert not tracker.degraded and tracker.run is not None
        history = MlflowClient(uri).get_metric_history(tracker.run.run_id, "meta_loss_after")
        assert [m.step for m in history] == [1, 2, 3, 4, 5]
        assert tracker.model is not None and tracker.model.uri == "models:/outage-model/1"
        version = MlflowClient(uri).get_model_version("outage-model", "1")
        assert version.run_id == tracker.run.run_id and version.tags == {"eval": "0.5"}
    finally:
        server.stop()


def test_what_mlflow_refuses_is_recorded_and_left_out_and_the_rest_reaches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A refusal never blocks the queue: the run is created, later records reach it."""
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")  # refuse, as servers may
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    params = {"rounds": 3, "held_out": "x" * 7000}  # over MLflow's param value limit
    tracker = _tracker(uri, tmp_path, None, params=params)
    tracker.log_metrics({"meta_loss_after": 1.0, "bad metric!": 2.0}, step=1)
    tracker.set_tag("bad tag!", "refused: not a valid key")
    tracker.register_model("bad/name", _save, tags={}, description="refused: not a valid name")
    tracker.log_metrics({"meta_loss_after": 0.5}, step=2)
    with caplog.at_level(logging.ERROR, logger="service.run_writer"):
        assert tracker.finish("FINISHED", timeout=30)
    assert tracker.run is not None and tracker.model is None and not tracker.degraded
    assert tracker.last_error is not None
    assert tracker.last_error.startswith("MLflow refused the model version of 'bad/name'")
    refused = [
        record.getMessage().split(";")[0]
        for record in caplog.records
        if record.name == "service.run_writer"
    ]
    assert refused == [
        "MLflow refused param 'held_out'",
        "MLflow refused metric 'bad metric!'",
        "MLflow refused tag 'bad tag!'",
        "MLflow refused the model version of 'bad/name'",
    ]
    client = MlflowClient(uri)
    run = client.get_run(tracker.run.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params == {"rounds": "3"} and run.data.tags["job_id"] == "x"
    history = client.get_metric_history(run.info.run_id, "meta_loss_after")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5)]
    assert not any((tmp_path / "staging").rglob("MLmodel"))  # the refused model's copy is gone


def test_a_locked_database_is_waited_out(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = _tracker(uri, tmp_path, None)
    assert tracker.flush()
    lock = sqlite3.connect(tmp_path / "mlflow.db")
    lock.execute("BEGIN EXCLUSIVE")  # another writer holds the database
    try:
        tracker.log_metrics({"meta_loss_after": 1.0}, step=1)
        wait_until(lambda: tracker.degraded, 60, "the tracker to wait for the locked database")
        assert tracker.last_error is not None and "database is locked" in tracker.last_error
    finally:
        lock.rollback()
        lock.close()
    assert tracker.finish("FINISHED", timeout=60) and tracker.run is not None
    assert not tracker.degraded and tracker.last_error is None
    history = MlflowClient(uri).get_metric_history(tracker.run.run_id, "meta_loss_after")
    assert [(m.step, m.value) for m in history] == [(1, 1.0)]


def test_experiments_are_model_training_experiments(tmp_path: Path) -> None:
    """The MLflow UI then shows a job's run as a training run, not as a GenAI evaluation."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    older = client.create_experiment("reptile-older")  # made by an earlier version of the service
    chosen = client.create_experiment(
        "reptile-chosen", tags={EXPERIMENT_KIND_TAG: "genai_development"}
    )
    tracker = _tracker(uri, tmp_path / "new", None, experiment="reptile-new")
    assert tracker.finish("FINISHED") and tracker.run is not None
    for name in ["reptile-older", "reptile-chosen"]:
        assert _tracker(uri, tmp_path / name, None, experiment=name).finish("FINISHED")
    kinds = [
        client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG)
        for experiment_id in [tracker.run.experiment_id, older, chosen]
    ]
    # a kind that someone chose is theirs to keep
    assert kinds == ["custom_model_development", "custom_model_development", "genai_development"]
