"""The controller: owns the jobs of this service and runs each one's meta-training.

Jobs run on a bounded thread pool (`max_concurrent_jobs`); each has its own Ray worker pool and
MLflow tracker. Records are persisted under the data dir, so a restarted controller finds its
jobs again and resumes interrupted ones from their last checkpoint. Running one job is
`service.runner`'s; adapting is `service.adaptation`'s.

Past ~350 lines on purpose: every change of a job's record (submit, progress, cancel, resume,
outcome) goes through this class's one lock, and adaptations read the same records and store.
"""

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

from mlflow.exceptions import MlflowException
from prometheus_client import CollectorRegistry

from reptile.params import Params
from service import adaptation
from service.adaptation import AdaptationError, Source, adaptation_config, image_shape
from service.adaptation_schemas import AdaptationCreate
from service.datasets import DatasetError
from service.errors import (
    Busy,
    Conflict,
    Invalid,
    NotFound,
    Unavailable,
)
from service.evaluations import Evaluations
from service.metrics import ServiceMetrics
from service.records import AdaptationRecord, JobRecord, JobState, MlflowInfo, now
from service.registry import ModelNotFound, Registry, RegistryError
from service.runner import JobRunner
from service.runtime import make_tracker, prepare_dataset
from service.settings import Settings
from service.specs import AnyJobSpec
from service.store import Store, new_id
from service.sweeps import Sweeps
from service.tracking import ModelVersionRef, RunRef, Tracker, run_url
from service.trainer import Progress
from service.weights import read_checkpoint, read_weights
from workers.cluster import connect, shortfall
from workers.memory import keep_freed_memory

log = logging.getLogger(__name__)

PERSIST_EVERY_S = 1.0  # progress is written to the record at most this often


@dataclass
class _Active:
    """A job that is queued or running in this process."""

    stop: threading.Event = field(default_factory=threading.Event)
    interrupted: bool = False  # stopped by a shutdown, to be resumed, not by a cancel
    runner: JobRunner | None = None
    persisted_at: float = 0.0


class Controller:
    def __init__(
        self, settings: Settings, metrics_registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.store = Store(settings.data_dir)
        self.registry = Registry(settings.tracking_uri)
        self._lock = threading.RLock()
        self._records = {r.id: r for r in self.store.load_jobs()}
        self._active: dict[str, _Active] = {}
        self._executor = ThreadPoolExecutor(settings.max_concurrent_jobs, thread_name_prefix="job")
        self.metrics = ServiceMetrics(self.jobs, metrics_registry)
        self._adaptation_slots = threading.BoundedSemaphore(settings.max_concurrent_adaptations)
        self.evaluations = Evaluations(settings, self.store)
        self.sweeps = Sweeps(settings)  # on the same Ray cluster, beside the jobs

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Join Ray and pick up the jobs a previous process left unfinished."""
        keep_freed_memory()  # evaluation and adaptation run inner loops in this process
        connect(self.settings.ray_address, self.settings.ray_num_cpus)
        for record in list(self._records.values()):
            if record.state.terminal:
                continue
            if self.settings.auto_resume:
                log.info("resuming job %s from round %s", record.id, record.checkpoint_round)
                self._enqueue(record.id)
            else:
                self._update(
                    record.id,
                    state=JobState.failed,
                    finished_at=now(),
                    error="interrupted by a controller restart; POST …/resume to continue",
                )
        self.sweeps.start()

    def shutdown(self) -> None:
        """Stop every job and sweep trial at the end of its round, checkpointed and left to
        resume at start."""
        with self._lock:
            for active in self._active.values():
                active.interrupted = True
                active.stop.set()
        self.evaluations.shutdown()
        self.sweeps.shutdown()
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- jobs ---------------------------------------------------------------------------
    def submit(self, spec: AnyJobSpec) -> JobRecord:
        """Queue a job; an image job's data set is checked and prepared here, before it runs."""
        self._check_capacity()  # before preparing a data set; again below, under the lock
        if problem := shortfall(spec.num_workers, 1, spec.gpus_per_worker):
            raise Invalid(problem)
        try:
            dataset = prepare_dataset(self.settings, spec)
        except DatasetError as error:
            raise Invalid(f"data: {error}") from error
        job_id = new_id()
        record = JobRecord(
            id=job_id,
            spec=spec,
            dataset=dataset,
            rounds=spec.rounds,
        )
        with self._lock:
            self._check_capacity()
            try:
                self.store.save_job(record)
            except OSError as error:
                raise Unavailable(f"cannot store the job: {error}") from error
            self._records[job_id] = record
            accepted = record.model_copy(deep=True)  # as queued, before its thread can start it
            self._enqueue(job_id)
        return accepted

    def get(self, job_id: str) -> JobRecord:
        with self._lock:
            if job_id not in self._records:
                raise NotFound(f"no job {job_id!r}")
            return self._records[job_id].model_copy(deep=True)

    def jobs(self) -> list[JobRecord]:
        with self._lock:
            return [r.model_copy(deep=True) for r in self._records.values()]

    def cancel(self, job_id: str) -> JobRecord:
        """Stop the job after its current round, keeping φ; a queued job never starts."""
        with self._lock:
            record = self.get(job_id)
            active = self._active.get(job_id)
            if record.state.terminal or active is None:
                raise Conflict(f"job {job_id} is already {record.state.value}")
            active.stop.set()
            if record.state == JobState.queued:
                self._update(job_id, state=JobState.cancelled, finished_at=now())
        return self.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        """Continue a cancelled or failed job from its last checkpoint, in the same MLflow run."""
        with self._lock:
            record = self.get(job_id)
            if record.state not in (JobState.cancelled, JobState.failed):
                raise Conflict(
                    f"job {job_id} is {record.state.value}; only cancelled or failed jobs resume"
                )
            if job_id in self._active:
                raise Conflict(f"job {job_id} is still stopping; resume it in a moment")
            if self.store.checkpoint_path(job_id).exists():  # fail now, not in the job
                read_checkpoint(self.store.checkpoint_path(job_id))
            self._check_capacity()
            self._update(job_id, state=JobState.queued, error=None, finished_at=None)
            accepted = self.get(job_id)  # as queued, before its thread can start it
            self._enqueue(job_id)
        return accepted

    def _check_capacity(self) -> None:
        """Refuse one more queued job once `max_pending_jobs` are queued or running."""
        with self._lock:
            pending = sum(not r.state.terminal for r in self._records.values())
        if pending >= self.settings.max_pending_jobs:
            raise Busy.jobs_pending(pending)

    def weights(self, job_id: str) -> tuple[Params, int]:
        """The current meta-weights and the round they belong to."""
        record = self.get(job_id)
        with self._lock:
            active = self._active.get(job_id)
            trainer = active.runner.trainer if active and active.runner else None
        if trainer is not None:
            return trainer.phi, record.round
        if self.store.weights_path(job_id).exists() and record.state.terminal:
            return read_weights(self.store.weights_path(job_id)), record.round
        if self.store.checkpoint_path(job_id).exists():
            checkpoint = read_checkpoint(self.store.checkpoint_path(job_id))
            return checkpoint.phi, checkpoint.round
        raise Conflict(f"job {job_id} has no weights yet (it is {record.state.value})")

    # --- adaptations ----------------------------------------------------------------------
    def job_source(self, job_id: str) -> Source:
        """The job's current φ (the latest round's while it runs) to adapt from."""
        record = self.get(job_id)
        phi, round_reached = self.weights(job_id)
        return Source(
            record.spec,
            phi,
            job_id,
            round_reached,
            image_shape(record.spec, record.dataset),
            run_id=record.mlflow.run_id,
        )

    def model_source(self, uri: str) -> Source:
        """A registered model's φ to adapt from: `models:/<name>/<version>` or `…@<alias>`."""
        try:
            return self.registry.source(uri)
        except ModelNotFound as error:
            raise NotFound(str(error)) from error
        except RegistryError as error:
            raise Invalid(str(error)) from error
        except (MlflowException, OSError) as error:
            raise Unavailable(f"the model registry cannot serve {uri}: {error}") from error

    def adapt(self, source: Source, body: AdaptationCreate) -> AdaptationRecord:
        """Adapt the source's φ to a new task, predict its queries, and keep the result."""
        steps = adaptation_config(source.spec, body).steps
        try:
            with (
                self._adaptation_slot(source.spec, steps, body.examples),
                self.metrics.adaptation_seconds.labels(source.spec.task).time(),
            ):
                outcome = adaptation.adapt(source, body)
        except AdaptationError as error:
            raise Invalid(str(error)) from error
        record = AdaptationRecord(
            id=new_id(),
            job_id=source.job_id,
            model=source.model,
            round=source.round,
            steps=outcome.steps,
            lr=outcome.lr,
            support_loss=outcome.support_loss,
            predictions=outcome.predictions,
        )
        try:
            self.store.save_adaptation(record, outcome.weights)
        except OSError as error:
            raise Unavailable(f"cannot store the adaptation: {error}") from error
        return record

    @contextmanager
    def _adaptation_slot(self, spec: AnyJobSpec, steps: int, examples: int) -> Iterator[None]:
        """Hold one of the `max_concurrent_adaptations` slots (each keeps a CPU busy) for an
        adaptation that costs no more than one round may (the family's `max_work`)."""
        if steps * examples > spec.max_work:
            raise Invalid(
                f"{steps} steps on {examples} support examples = {steps * examples:,} "
                f"example-steps exceeds this service's limit of {spec.max_work:,}"
            )
        if not self._adaptation_slots.acquire(blocking=False):
            raise Busy.adaptations_running(self.settings.max_concurrent_adaptations)
        try:
            yield
        finally:
            self._adaptation_slots.release()

    def adaptation(self, adaptation_id: str) -> AdaptationRecord:
        try:
            return self.store.load_adaptation(adaptation_id)
        except KeyError:
            raise NotFound(f"no adaptation {adaptation_id!r}") from None

    def adaptation_weights(self, adaptation_id: str) -> Params:
        self.adaptation(adaptation_id)
        return self.store.load_adaptation_weights(adaptation_id)

    # --- running a job ----------------------------------------------------------------------
    def _enqueue(self, job_id: str) -> None:
        self._active[job_id] = _Active()
        self._executor.submit(self._run, job_id)

    def _update(self, job_id: str, **changes: object) -> None:
        """Apply `changes` to the record and persist it.

        A record that cannot be written (disk full) stays current in memory, where the API
        reads it, and reaches the disk with the next write that succeeds.
        """
        with self._lock:
            record = self._records[job_id]
            for key, value in changes.items():
                setattr(record, key, value)
            record.updated_at = now()
            try:
                self.store.save_job(record)
            except OSError as error:
                log.error("could not persist job %s: %s", job_id, error)

    def _run(self, job_id: str) -> None:
        active = self._active[job_id]
        if active.stop.is_set():  # cancelled while queued
            self._finish(job_id)
            return
        record = self.get(job_id)
        self._update(job_id, state=JobState.running, started_at=record.started_at or now())
        try:
            tracker = self._tracker(record)
        except Exception as error:  # e.g. its journal cannot be read: no run to end
            log.exception("job %s failed", job_id)
            self._update(
                job_id,
                state=JobState.failed,
                finished_at=now(),
                error=f"{type(error).__name__}: {error}",
            )
            self._finish(job_id)
            return
        active.runner = JobRunner(
            self.settings,
            job_id,
            record.spec,
            record.dataset,
            self.store.checkpoint_path(job_id),
            self.store.weights_path(job_id),
            tracker,
            on_progress=lambda progress: self._progress(job_id, progress, tracker),
        )
        outcome = active.runner.run(active.stop.is_set, lambda: active.interrupted)
        # The outcome is recorded only after MLflow has the whole run, so a job that reads
        # `succeeded` has its metrics and artifacts in MLflow (unless tracking is degraded).
        changes: dict[str, object] = {"mlflow": self._mlflow_info(tracker.run, tracker)}
        if outcome.state is not None:  # None: interrupted, left running to resume at start
            changes |= {"state": outcome.state, "finished_at": now(), "error": outcome.error}
        if outcome.checkpoint_round is not None:
            changes["checkpoint_round"] = outcome.checkpoint_round
        self._update(job_id, **changes)
        self._finish(job_id)

    def _finish(self, job_id: str) -> None:
        with self._lock:
            self._active.pop(job_id, None)

    def _tracker(self, record: JobRecord) -> Tracker:
        run = None
        if record.mlflow.run_id and record.mlflow.experiment_id:
            run = RunRef(record.mlflow.experiment_id, record.mlflow.run_id)

        def on_run(run: RunRef) -> None:  # called from the tracker's thread
            self._update(record.id, mlflow=self._mlflow_info(run))

        def on_model(model: ModelVersionRef) -> None:  # the tracker's thread, once registered
            with self._lock:
                mlflow = self._records[record.id].mlflow.model_copy(
                    update={"model_uri": model.uri, "model_version": model.version}
                )
            self._update(record.id, mlflow=mlflow)

        return make_tracker(
            self.settings,
            record.spec,
            run_name=record.spec.name or f"{record.spec.task}-{record.id[:8]}",
            tags={"job_id": record.id},
            staging_dir=self.store.staging_dir(record.id),
            run=run,
            on_run=on_run,
            on_model=on_model,
        )

    def _mlflow_info(self, run: RunRef | None, tracker: Tracker | None = None) -> MlflowInfo:
        degraded = tracker is not None and tracker.degraded
        return MlflowInfo(
            experiment_id=run.experiment_id if run else None,
            run_id=run.run_id if run else None,
            ui_url=run_url(self.settings.mlflow_ui_url, run) if run else None,
            status="degraded" if degraded else "ok",
            error=tracker.last_error if tracker is not None else None,
            model_uri=tracker.model.uri if tracker and tracker.model else None,
            model_version=tracker.model.version if tracker and tracker.model else None,
        )

    def _progress(self, job_id: str, progress: Progress, tracker: Tracker) -> None:
        with self._lock:
            record = self._records[job_id]
            if progress.round:  # round 0 only reports the initial evaluation
                self.metrics.rounds.labels(record.spec.task).inc()
            record.round = progress.round
            record.metrics = progress.metrics or record.metrics
            if progress.evaluation is not None:
                record.evaluation = progress.evaluation
            if progress.checkpoint_round is not None:
                record.checkpoint_round = progress.checkpoint_round
            record.mlflow = self._mlflow_info(tracker.run, tracker)
            record.updated_at = now()
            active = self._active[job_id]
            due = time.monotonic() - active.persisted_at >= PERSIST_EVERY_S
            if due or progress.checkpoint_round is not None:
                self.store.save_job(record)
                active.persisted_at = time.monotonic()
