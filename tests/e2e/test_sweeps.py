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
from service.weights import read_weights
from tests.utils.factories import SINE_SWEEP
from tests.utils.net import wait_until
from tests.utils.reference import assert_every_round_logged_once, assert_same_phi, serial_phi
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


def test_a_cancelled_sweep_resumes_its_trials_from_their_checkpoints(server: Server) -> None:
    """One trial at a time: the cancel stops the running one checkpointed, the next never
    starts; the resume finishes the first in its own MLflow run and runs the second."""
    base = {**SINE_SWEEP["base"], "rounds": 1000, "eval_every": 50, "execution": "split"}
    body = {**SINE_SWEEP, "base": base, "space": {"inner_lr": {"grid": [0.02, 0.01]}}}
    body |= {"trials": 2, "max_concurrent": 1, "scheduler": "fifo"}
    with ReptileClient(server.url) as client:
        sweep_id = client.submit_sweep(body).id

        def evaluated() -> bool:
            trials = client.sweep(sweep_id).trials
            return bool(trials) and trials[0].round >= 50

        wait_until(evaluated, 600, "the first trial's first evaluation", every=0.2)
        client.cancel_sweep(sweep_id)
        list(client.sweep_events(sweep_id))
        cancelled = client.sweep(sweep_id)
        assert cancelled.state == JobState.cancelled, cancelled
        first, second = cancelled.trials
        assert first.state == second.state == TrialState.cancelled
        assert 50 <= first.round < 1000 and first.run_id is not None
        assert second.round == 0 and second.run_id is None  # never started
        assert MlflowClient(server.tracking_uri).get_run(first.run_id).info.status == "KILLED"

        assert client.resume_sweep(sweep_id).state == JobState.queued
        list(client.sweep_events(sweep_id))
        done = client.sweep(sweep_id)
    assert done.state == JobState.succeeded, done.error
    assert [t.state for t in done.trials] == [TrialState.succeeded] * 2
    assert done.trials[0].run_id == first.run_id and done.trials[0].round == 1000
    run = MlflowClient(server.tracking_uri).get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert_every_round_logged_once(server.tracking_uri, first.run_id, 1000)
    # resumed from its Tune checkpoint to the φ of an uninterrupted run
    weights = server.data_dir / "sweeps" / sweep_id / "trials" / first.id / "weights.safetensors"
    assert_same_phi(read_weights(weights), serial_phi({**base, "inner_lr": 0.02}))
