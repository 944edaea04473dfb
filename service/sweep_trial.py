"""One sweep trial: a Ray Tune function trainable that runs the trial's job with `JobRunner`.

The trial's job is the sweep's base spec with the trial's sampled values. It runs in Tune's
trial actor, its worker pool inside the placement group Tune reserved for it, and reports the
held-out evaluation to Tune at each evaluation, with the job's checkpoint as the trial's Tune
checkpoint: Tune restores a restarted trial from it (`tune.get_checkpoint()`), and the job
resumes from that round, in the same MLflow run (a child of the sweep's parent run).

Everything the trial needs from the controller is in `TrialContext`, and what it leaves is under
`<sweep dir>/trials/<trial id>/` (its checkpoint, final weights, MLflow staging and run id), so
that Tune can pickle the trainable and a restarted controller can restore it.
"""

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune

from service.files import atomic_write
from service.records import JobState
from service.runner import JobRunner
from service.runtime import make_tracker
from service.settings import Settings
from service.sweep_specs import SweepSpec
from service.tracking import RunRef
from service.trainer import Progress

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.safetensors"
STOP_FILE = "stop"  # in the sweep's directory: `StopMarker`
PARENT_RUN_TAG = "mlflow.parentRunId"  # MLflow nests a run under the run this tag names
FLUSH_TIMEOUT_S = 10.0


class TrialStopped(RuntimeError):
    """The trial stopped before its last round (a cancel or a shutdown of the sweep): an error
    to Tune, so that `Tuner.restore(resume_errored=True)` resumes it from its checkpoint."""


@dataclass(frozen=True)
class StopMarker:
    """A file in the sweep's directory that stops its trials at their next round: its text
    says why ("cancel" or "shutdown"). A file, not an event: trials run in other processes,
    and it survives a controller restart."""

    path: Path

    def set(self, reason: str) -> None:
        atomic_write(self.path, reason.encode())

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def reason(self) -> str | None:
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def requested(self) -> bool:
        return self.path.exists()

    def interrupted(self) -> bool:
        return self.reason() == "shutdown"


@dataclass(frozen=True)
class TrialContext:
    """What each trial of one sweep needs, pickled by Tune with the trainable."""

    settings: Settings
    sweep_id: str
    spec: SweepSpec
    dataset: str | None  # an image sweep's prepared data set
    directory: Path  # the sweep's directory
    parent_run: RunRef

    def trial_dir(self, trial_id: str) -> Path:
        return self.directory / "trials" / trial_id

    @property
    def stop(self) -> StopMarker:
        return StopMarker(self.directory / STOP_FILE)


def trial_run(directory: Path) -> RunRef | None:
    """The MLflow run of the trial whose directory this is, once created."""
    path = directory / "run.json"
    if not path.exists():
        return None
    return RunRef(**json.loads(path.read_text()))


def run_trial(config: dict[str, Any], context: TrialContext) -> None:
    """Tune's trainable: run the trial's job from its last Tune checkpoint; report each
    evaluation (`round` and the evaluation metrics) with the checkpoint of that round."""
    trial_id = tune.get_context().get_trial_id()
    stop = context.stop
    if stop.requested():  # a trial that starts after a cancel: nothing to run or record
        raise TrialStopped(f"trial {trial_id} not started: the sweep was stopped")
    spec = context.spec.trial_spec(config)
    directory = context.trial_dir(trial_id)
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint_path = directory / CHECKPOINT_FILE
    # Tune's checkpoint is the trial's state: the rounds after it are run (and reported) again
    restored = tune.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as restored_dir:
            shutil.copyfile(Path(restored_dir) / CHECKPOINT_FILE, checkpoint_path)
    else:
        checkpoint_path.unlink(missing_ok=True)

    def on_run(run: RunRef) -> None:
        record = {"experiment_id": run.experiment_id, "run_id": run.run_id}
        atomic_write(directory / "run.json", json.dumps(record).encode())

    job_id = f"{context.sweep_id}-{trial_id}"
    tracker = make_tracker(
        context.settings,
        spec,
        run_name=f"{spec.name or 'sweep-' + context.sweep_id[:8]}-{trial_id}",
        tags={
            "job_id": job_id,
            "sweep_id": context.sweep_id,
            "trial_id": trial_id,
            PARENT_RUN_TAG: context.parent_run.run_id,
        },
        staging_dir=directory / "mlflow-staging",
        run=trial_run(directory),
        on_run=on_run,
    )

    def report(metrics: dict[str, float], with_checkpoint: bool) -> None:
        if not with_checkpoint:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as scratch:
            shutil.copyfile(checkpoint_path, Path(scratch) / CHECKPOINT_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(scratch))

    def on_progress(progress: Progress) -> None:
        # round 0: φ untrained; the last round: reported once the job has ended, since Tune
        # ends a trial's process when it has its last result
        if progress.evaluation is None or progress.round in (0, spec.rounds):
            return
        # MLflow holds the trial's rounds up to here before Tune may stop it (ASHA)
        tracker.flush(FLUSH_TIMEOUT_S)
        metrics = {"round": progress.round, **progress.evaluation}
        report(metrics, with_checkpoint=progress.checkpoint_round == progress.round)

    runner = JobRunner(
        context.settings,
        job_id,
        spec,
        context.dataset,
        checkpoint_path,
        directory / "weights.safetensors",
        tracker,
        on_progress=on_progress,
    )
    outcome = runner.run(stop.requested, stop.interrupted)
    if outcome.state != JobState.succeeded:
        reason = outcome.error or f"the sweep was stopped ({stop.reason()})"
        raise TrialStopped(f"trial {trial_id} stopped at round {outcome.round}: {reason}")
    # the final evaluation, also when a restored trial had nothing left to train
    assert runner.trainer is not None
    report({**runner.trainer.history[-1], "round": spec.rounds}, with_checkpoint=True)
