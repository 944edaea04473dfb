"""A sweep through a real server: Ray Tune trials on the job runner, ASHA, nested MLflow runs."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from mlflow import MlflowClient

from api.client import ReptileClient
from api.schemas import SweepPublic
from service.records import JobState, TrialState
from tests.utils.factories import SINE_SWEEP
from tests.utils.server import Server, start_server

REPTILE = str(Path(sys.executable).with_name("reptile"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Room for two trials of a driver and one worker each, and no more: two trials at once
    hold every CPU, so their workers start only inside their placement groups."""
    running = start_server(
        Path(tmp_path_factory.mktemp("service")),
        REPTILE_RAY_NUM_CPUS="4",
        REPTILE_SWEEP_CPUS="4",
    )
    yield running
    running.stop()


@pytest.fixture(scope="module")
def swept(server: Server) -> SweepPublic:
    """The sweep, followed through its event stream to its end."""
    with ReptileClient(server.url) as client:
        accepted = client.submit_sweep(SINE_SWEEP)
        assert accepted.state == JobState.queued and accepted.trials == []
        seen = list(client.sweep_events(accepted.id))
        assert seen and any(record.trials for record in seen)
        return client.sweep(accepted.id)


def test_asha_stops_trials_early_and_the_best_is_the_best_metric(swept: SweepPublic) -> None:
    assert swept.state == JobState.succeeded, swept.error
    assert len(swept.trials) == 4
    assert sorted(t.params["inner_lr"] for t in swept.trials) == [5e-5, 1e-4, 0.01, 0.02]
    stopped = [t for t in swept.trials if t.state == TrialState.stopped]
    assert stopped and all(t.round < t.rounds == 8 for t in stopped)
    finished = [t for t in swept.trials if t.state == TrialState.succeeded]
    assert finished and all(t.round == 8 for t in finished)
    assert len(stopped) + len(finished) == 4
    best = min(swept.trials, key=lambda t: t.metric if t.metric is not None else float("inf"))
    assert swept.best == best and swept.best.state == TrialState.succeeded


def test_every_trial_is_a_child_run_of_the_sweeps_run(server: Server, swept: SweepPublic) -> None:
    client = MlflowClient(server.tracking_uri)
    parent = client.get_run(swept.mlflow.run_id or "")
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_id"] == swept.id
    assert swept.best is not None and parent.data.tags["best_run_id"] == swept.best.run_id
    assert parent.data.params["metric"] == "eval_mse_after_32"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'"
    )
    assert {run.info.run_id for run in children} == {t.run_id for t in swept.trials}
    runs = {run.info.run_id: run for run in children}
    for trial in swept.trials:
        run = runs[trial.run_id or ""]
        assert float(run.data.params["inner_lr"]) == trial.params["inner_lr"]
        history = client.get_metric_history(run.info.run_id, "eval_mse_after_32")
        assert max(m.step for m in history) == trial.round  # every evaluation it reached
        if trial.state == TrialState.stopped:
            assert run.info.status == "KILLED"
            assert run.data.tags["sweep_stopped_early"] == f"round {trial.round}"
        else:
            assert run.info.status == "FINISHED"


def test_the_best_trials_model_is_aliased_as_the_sweeps_best(
    server: Server, swept: SweepPublic
) -> None:
    assert swept.best is not None
    assert swept.mlflow.model_uri == f"models:/reptile-sine@sweep-{swept.id}"
    registry = MlflowClient(server.tracking_uri, registry_uri=server.tracking_uri)
    version = registry.get_model_version_by_alias("reptile-sine", f"sweep-{swept.id}")
    assert (
        version.run_id == swept.best.run_id and str(version.version) == swept.mlflow.model_version
    )
    assert version.tags["sweep_best"] == swept.id


def test_the_cli_lists_and_shows_the_sweep(server: Server, swept: SweepPublic) -> None:
    def reptile(*args: str) -> str:
        done = subprocess.run(
            [REPTILE, "sweeps", *args, "--url", server.url], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    assert swept.id in reptile("list") and "succeeded" in reptile("list")
    shown = reptile("show", swept.id)
    assert f"sweep {swept.id} succeeded" in shown
    assert swept.best is not None and f"{swept.best.id}" in shown and " *" in shown
    assert f"models:/reptile-sine@sweep-{swept.id}" in shown
    done = subprocess.run(
        [REPTILE, "sweeps", "cancel", swept.id, "--url", server.url], capture_output=True, text=True
    )
    assert done.returncode == 1 and "already succeeded" in done.stderr
