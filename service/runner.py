"""One job from its spec to a finished MLflow run: the one path that the server's controller
and `reptile train` both run.

`JobRunner.run` starts the job's worker pool, trains (from its checkpoint when there is one),
writes φ, registers a succeeded job's model, ends the MLflow run with the status that matches
the outcome, and shuts the pool down, whatever happens on the way.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from service.adaptation import Source, image_shape
from service.records import JobState
from service.registry import register
from service.runtime import make_pool
from service.settings import Settings
from service.specs import AnyJobSpec
from service.tracking import Tracker
from service.trainer import MetaTrainer, Progress
from service.weights import read_checkpoint, weights_to_bytes, write_weights
from workers.pool import WorkerPool

log = logging.getLogger(__name__)

# the MLflow run's end status for each way a job ends
RUN_STATUS = {
    JobState.succeeded: "FINISHED",
    JobState.cancelled: "KILLED",
    JobState.failed: "FAILED",
}


@dataclass(frozen=True)
class JobOutcome:
    """How a run of the job ended."""

    state: JobState | None  # None: interrupted to be resumed, its MLflow run left open
    round: int  # rounds completed
    error: str | None = None  # why it failed
    checkpoint_round: int | None = None  # a failed job's last checkpoint, to resume from
    tracked: bool = True  # False if MLflow did not get every record before the run ended


@dataclass
class JobRunner:
    """Runs one job; `trainer` (its latest φ) is readable from other threads once it trains."""

    settings: Settings
    job_id: str
    spec: AnyJobSpec
    dataset: str | None  # an image job's prepared data set
    checkpoint_path: Path
    weights_path: Path  # where φ goes when the job ends (succeeded or cancelled)
    tracker: Tracker
    on_progress: Callable[[Progress], None] = lambda progress: None
    trainer: MetaTrainer | None = None
    pool: WorkerPool | None = None

    def run(
        self,
        should_stop: Callable[[], bool] = lambda: False,
        interrupted: Callable[[], bool] = lambda: False,
    ) -> JobOutcome:
        """Train until the last round or `should_stop()`: a stop is a cancel (KILLED, φ kept),
        unless `interrupted()` says it is a shutdown, after which the job resumes in the same
        MLflow run. A failure ends the run FAILED with the error; KeyboardInterrupt ends it
        KILLED and is raised again."""
        try:
            outcome = self._train(should_stop, interrupted)
        except KeyboardInterrupt:
            self._end(RUN_STATUS[JobState.cancelled])
            raise
        tracked = self._end(None if outcome.state is None else RUN_STATUS[outcome.state])
        return replace(outcome, tracked=tracked)

    def _train(
        self, should_stop: Callable[[], bool], interrupted: Callable[[], bool]
    ) -> JobOutcome:
        try:
            path = self.checkpoint_path
            resume = read_checkpoint(path) if path.exists() else None
            self.pool = make_pool(self.settings, self.spec, self.dataset, should_stop)
            self.trainer = MetaTrainer(
                self.spec,
                self.pool,
                self.tracker,
                path,
                resume=resume,
                dataset=self.dataset,
                on_progress=self.on_progress,
            )
            completed = self.trainer.run(should_stop)
            if not completed and interrupted():
                return JobOutcome(None, self.trainer.round)
            return JobOutcome(self._keep_weights(completed), self.trainer.round)
        except Exception as error:
            log.exception("job %s failed", self.job_id)
            trainer = self.trainer
            return JobOutcome(
                JobState.failed,
                trainer.round if trainer else 0,
                error=f"{type(error).__name__}: {error}",
                checkpoint_round=trainer.checkpointed if trainer and trainer.checkpointed else None,
            )

    def _end(self, status: str | None) -> bool:
        """Shut the pool down and end the MLflow run with `status` (None: leave it open);
        whether MLflow got every record."""
        if self.pool is not None:  # the Ray nodes that ran it, where its actor logs are
            self.tracker.set_tag("ray_nodes", ",".join(sorted(self.pool.node_ids)))
            self.pool.shutdown()
        return self.tracker.finish(status)

    def _keep_weights(self, completed: bool) -> JobState:
        """Keep φ (file and MLflow artifact); register it as a model if the job completed."""
        assert self.trainer is not None
        phi = self.trainer.phi
        write_weights(self.weights_path, phi)
        self.tracker.log_artifact(weights_to_bytes(phi), "weights/phi.safetensors")
        if not completed:
            return JobState.cancelled
        final = Source(
            self.spec, phi, self.job_id, self.spec.rounds, image_shape(self.spec, self.dataset)
        )
        register(self.tracker, final, self.trainer.history[-1])
        return JobState.succeeded
