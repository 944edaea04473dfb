"""A sweep's controller killed outright: the restarted one restores the sweep from Tune's state."""

import signal
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from api.client import ReptileClient
from api.schemas import SweepPublic
from service.records import JobState, TrialState
from tests.utils.factories import SINE_SWEEP
from tests.utils.net import wait_until
from tests.utils.processes import descendants, kill_all
from tests.utils.server import start_server

pytestmark = pytest.mark.faults

ENDED = (TrialState.succeeded, TrialState.stopped)


def test_a_sigkilled_controller_resumes_the_sweep_to_the_same_best_trial(tmp_path: Path) -> None:
    first = start_server(tmp_path, REPTILE_SWEEP_CPUS="4")
    try:
        with ReptileClient(first.url) as client:
            sweep_id = client.submit_sweep(SINE_SWEEP).id
            seen: SweepPublic | None = None

            def one_trial_ended() -> bool:
                nonlocal seen
                seen = client.sweep(sweep_id)
                assert not seen.state.terminal, seen
                return any(t.state in ENDED for t in seen.trials)

            wait_until(one_trial_ended, 600, "a trial to end", every=0.2)
        time.sleep(3)  # Tune saves the sweep's state every second (TUNE_GLOBAL_CHECKPOINT_S)
        left_behind = descendants(first)
        first.stop(signal.SIGKILL)  # no shutdown hook runs: the crash of a machine
    finally:
        first.stop()
        kill_all(left_behind)  # a crashed machine takes its Ray with it
    assert seen is not None
    ended = {t.id: t for t in seen.trials if t.state in ENDED}
    unfinished = {t.id: t for t in seen.trials if t.state not in ENDED}
    assert unfinished, "the sweep ended before the kill"

    second = start_server(tmp_path, REPTILE_SWEEP_CPUS="4")
    try:
        with ReptileClient(second.url) as client:
            list(client.sweep_events(sweep_id))  # to its end
            done = client.sweep(sweep_id)
    finally:
        second.stop()
    assert done.state == JobState.succeeded, done.error
    assert len(done.trials) == 4 and all(t.state in ENDED for t in done.trials)
    assert any(t.state == TrialState.stopped for t in done.trials)
    # the best of the uninterrupted sweep (tests/e2e/test_sweeps.py): the largest step size
    assert done.best is not None and done.best.params == {"inner_lr": 0.02}
    assert done.best.state == TrialState.succeeded
    assert done.mlflow.run_id == seen.mlflow.run_id  # the same parent run

    trials = {t.id: t for t in done.trials}
    mlflow = MlflowClient(second.tracking_uri, registry_uri=second.tracking_uri)
    for trial_id, before in ended.items():  # not redone: as they were, one model each
        assert trials[trial_id] == before
    for trial_id, before in unfinished.items():  # resumed in the run they had, if any
        if before.run_id is not None:
            assert trials[trial_id].run_id == before.run_id
    for trial in done.trials:
        run = mlflow.get_run(trial.run_id or "")
        assert run.data.tags["mlflow.parentRunId"] == done.mlflow.run_id
        assert run.info.status == ("FINISHED" if trial.state == TrialState.succeeded else "KILLED")
        steps = [m.step for m in mlflow.get_metric_history(trial.run_id or "", "eval_mse_before")]
        assert sorted(steps) == sorted(set(steps))  # each evaluation logged once
        versions = mlflow.search_model_versions(f"run_id = '{trial.run_id}'")
        assert len(versions) == (trial.state == TrialState.succeeded)
    best = mlflow.get_model_version_by_alias("reptile-sine", f"sweep-{sweep_id}")
    assert best.run_id == done.best.run_id
