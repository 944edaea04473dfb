"""Hyperparameter sweeps on Ray Tune: the controller's side.

A sweep is a Ray Tune `Tuner` whose trials each run one job (`service.sweep_trial`), on the
same Ray cluster as the jobs. Its driver (`Tuner.fit()`) runs on this module's one sweep
thread, so sweeps run one at a time, and each holds at most `max_concurrent` trials' placement
groups, within `sweep_cpus` (the CPUs that jobs are not promised: docs/sweeps.md). Tune keeps
the sweep's state under `<data_dir>/sweeps/<id>/tune`, so a restarted controller restores it
(`Tuner.restore`): finished trials stay finished, unfinished ones resume from their last Tune
checkpoint.

    <data_dir>/sweeps/<id>/record.json   spec, state, MLflow parent run, best trial
    <data_dir>/sweeps/<id>/trials.json   the trials as Tune last saw them (`TrialTable`)
    <data_dir>/sweeps/<id>/stop          present while a cancel or a shutdown stops the trials
    <data_dir>/sweeps/<id>/tune/         Tune's experiment: its state and trials' checkpoints
    <data_dir>/sweeps/<id>/trials/<trial id>/  each trial's job: checkpoint, weights, MLflow

MLflow: the sweep is a parent run in the experiment `reptile-<task>`, each trial's job run a
child of it (`mlflow.parentRunId`); the best trial's registered model version gets the alias
`sweep-<id>`.
"""

import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import TypeAdapter, ValidationError
from ray import tune
from ray.tune import Callback
from ray.tune.experiment import Trial
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import BasicVariantGenerator

from service.datasets import DatasetError
from service.errors import Busy, Conflict, Invalid, NotFound, Unavailable
from service.files import atomic_write
from service.records import (
    JobState,
    SweepMlflow,
    SweepRecord,
    TrialInfo,
    TrialState,
    now,
)
from service.runtime import check_families, make_run_writer, prepare_dataset
from service.settings import Settings
from service.specs import SineJobSpec
from service.store import new_id, valid_id
from service.sweep_specs import SweepSpec
from service.sweep_trial import STOP_FILE, StopMarker, TrialContext, run_trial, trial_run
from service.tracking import RunRef, run_url
from workers.cluster import total_resource

log = logging.getLogger(__name__)

# Tune saves the sweep's state at most this often (its default adapts, to ten seconds and
# more): what a killed controller's sweep resumes from.
os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")

SWEEP_RETRY_S = 60  # Retry-After when as many sweeps as allowed are pending (one runs at once)
_TRIALS = TypeAdapter(list[TrialInfo])
# CPUs a default job's workers take: what `sweep_cpus` leaves each concurrent job by default
DEFAULT_JOB_CPUS = SineJobSpec.model_fields["num_workers"].default


def trial_cpus(spec: SweepSpec) -> int:
    """CPUs one trial holds: its driver (Tune's trial actor) and its job's workers."""
    return 1 + spec.base.num_workers


def trial_bundles(spec: SweepSpec) -> list[dict[str, float]]:
    """The trial's placement group: the driver's bundle, then one per worker."""
    worker: dict[str, float] = {"CPU": 1}
    if spec.base.gpus_per_worker:
        worker["GPU"] = spec.base.gpus_per_worker
    driver: dict[str, float] = {"CPU": 1}
    return [driver] + [dict(worker) for _ in range(spec.base.num_workers)]


class TrialTable(Callback):
    """Keeps `trials.json` as Tune sees the trials, and ends the MLflow run of a trial that
    the scheduler stopped early (Tune ended its process).

    Picklable (Tune saves it with the experiment): it holds paths and names, no live objects.
    """

    def __init__(self, directory: Path, metric: str, rounds: int, tracking_uri: str) -> None:
        self.directory = directory
        self.metric = metric
        self.rounds = rounds
        self.tracking_uri = tracking_uri
        self.written = b""
        self.errors: dict[str, str] = {}
        self.stopped: set[str] = set()  # trials that ended by a stop of the sweep

    # --- Tune's hooks (in the driver, on the sweep thread) ----------------------------------
    def on_step_end(self, iteration: int, trials: list[Trial], **info: Any) -> None:
        self.write(trials)

    def on_trial_error(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        error = trial.get_pickled_error() or trial.get_error()
        self.errors[trial.trial_id] = str(error) if error is not None else "failed"
        if StopMarker(self.directory / STOP_FILE).requested():  # a cancel's or shutdown's
            self.stopped.add(trial.trial_id)
        else:
            self.stopped.discard(trial.trial_id)
        self.write(trials)

    def on_trial_complete(
        self, iteration: int, trials: list[Trial], trial: Trial, **info: Any
    ) -> None:
        self.write(trials)
        self.stopped_early(trial)

    def on_experiment_end(self, trials: list[Trial], **info: Any) -> None:
        self.write(trials)

    # ---------------------------------------------------------------------------------------
    def row(self, trial: Trial) -> TrialInfo:
        result = trial.last_result or {}
        reached = int(result.get("round", 0))
        state = {
            Trial.PENDING: TrialState.pending,
            Trial.RUNNING: TrialState.running,
            Trial.PAUSED: TrialState.paused,
        }.get(trial.status)
        error = self.errors.get(trial.trial_id)
        if state is None and trial.status == Trial.TERMINATED:
            state = TrialState.succeeded if reached >= self.rounds else TrialState.stopped
        elif state is None:
            state = TrialState.cancelled if trial.trial_id in self.stopped else TrialState.failed
        metric = result.get(self.metric)
        run = trial_run(self.directory / "trials" / trial.trial_id)
        return TrialInfo(
            id=trial.trial_id,
            params=dict(trial.config),
            state=state,
            round=reached,
            rounds=self.rounds,
            metric=None if metric is None else float(metric),
            run_id=run.run_id if run else None,
            error=error.strip().splitlines()[-1] if error else None,
        )

    def write(self, trials: list[Trial]) -> None:
        data = _TRIALS.dump_json([self.row(trial) for trial in trials], indent=2)
        if data != self.written:
            atomic_write(self.directory / "trials.json", data)
            self.written = data

    def stopped_early(self, trial: Trial) -> None:
        row = self.row(trial)  # its status may not read TERMINATED yet
        if row.round >= self.rounds or row.run_id is None:
            return
        client = MlflowClient(self.tracking_uri)
        try:
            client.set_tag(row.run_id, "sweep_stopped_early", f"round {row.round}")
            client.set_terminated(row.run_id, status="KILLED")
        except MlflowException as error:
            log.warning("could not end the run of stopped trial %s: %s", row.id, error)


def best_trial(spec: SweepSpec, trials: list[TrialInfo]) -> TrialInfo | None:
    """The best metric among the trials that ran their whole budget (those ASHA let through);
    among all trials with a metric while none has."""
    scored = [t for t in trials if t.metric is not None]
    finished = [t for t in scored if t.state == TrialState.succeeded]
    candidates = finished or scored
    if not candidates:
        return None
    sign = 1 if spec.mode == "min" else -1
    return min(candidates, key=lambda t: sign * (t.metric or 0.0))


class Sweeps:
    """The service's sweeps: submit, read, cancel, resume; run one at a time on Ray Tune."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.directory = settings.data_dir / "sweeps"
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._records = {r.id: r for r in self._load()}
        self._running: set[str] = set()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sweep")

    # --- life cycle ---------------------------------------------------------------------
    def start(self) -> None:
        """Restore the sweeps a previous process left unfinished (Ray is connected)."""
        for record in list(self._records.values()):
            if record.state.terminal:
                continue
            if self.settings.auto_resume:
                log.info("resuming sweep %s", record.id)
                self._enqueue(record.id)
            else:
                self._update(
                    record.id,
                    state=JobState.failed,
                    finished_at=now(),
                    error="interrupted by a controller restart; POST …/resume to continue",
                )

    def shutdown(self) -> None:
        """Stop the running sweep's trials at a round boundary, to resume at start."""
        with self._lock:
            for sweep_id in self._running:
                self._context(self._records[sweep_id]).stop.set("shutdown")
        self._executor.shutdown(wait=True, cancel_futures=True)

    # --- sweeps ---------------------------------------------------------------------------
    def cpus(self) -> int:
        """CPUs sweep trials may hold at once."""
        if self.settings.sweep_cpus is not None:
            return self.settings.sweep_cpus
        jobs = self.settings.max_concurrent_jobs * DEFAULT_JOB_CPUS
        return max(0, int(total_resource("CPU")) - jobs)

    def submit(self, spec: SweepSpec) -> SweepRecord:
        """Queue a sweep after checking it against the service's limits."""
        settings = self.settings
        if spec.trials > settings.max_sweep_trials:
            raise Invalid(
                f"trials={spec.trials} exceeds this service's limit of {settings.max_sweep_trials}"
            )
        if (total := spec.trials * spec.base.rounds) > settings.max_sweep_rounds:
            raise Invalid(
                f"trials × base.rounds = {total:,} rounds exceeds this service's limit of "
                f"{settings.max_sweep_rounds:,} for one sweep"
            )
        needed, cpus = spec.max_concurrent * trial_cpus(spec), self.cpus()
        if needed > cpus:
            raise Invalid(
                f"max_concurrent={spec.max_concurrent} trials of {trial_cpus(spec)} CPUs (a "
                f"driver and base.num_workers={spec.base.num_workers}) need {needed}; sweeps "
                f"may hold {cpus} CPUs here (REPTILE_SWEEP_CPUS)"
            )
        self._check_capacity()
        try:
            dataset = prepare_dataset(settings, spec.base)
        except DatasetError as error:
            raise Invalid(f"base.data: {error}") from error
        if dataset is not None and (values := spec.most_data()):
            trial = spec.trial_spec(values)
            assert not isinstance(trial, SineJobSpec)
            try:  # the trial that needs the most classes and images per class
                check_families(trial, dataset, training=True)
            except DatasetError as error:
                raise Invalid(f"space {values}: base.data: {error}") from error
        record = SweepRecord(id=new_id(), spec=spec, dataset=dataset)
        with self._lock:
            self._check_capacity()
            try:
                self._save(record)
            except OSError as error:
                raise Unavailable(f"cannot store the sweep: {error}") from error
            self._records[record.id] = record
            accepted = record.model_copy(deep=True)
            self._enqueue(record.id)
        return accepted

    def get(self, sweep_id: str) -> SweepRecord:
        with self._lock:
            if sweep_id not in self._records:
                raise NotFound(f"no sweep {sweep_id!r}")
            record = self._records[sweep_id].model_copy(deep=True)
        record.trials = self._trials(sweep_id)
        record.best = best_trial(record.spec, record.trials)
        return record

    def sweeps(self) -> list[SweepRecord]:
        with self._lock:
            ids = list(self._records)
        return [self.get(sweep_id) for sweep_id in ids]

    def cancel(self, sweep_id: str) -> SweepRecord:
        """Stop the running trials after their current round (checkpointed); start no more."""
        with self._lock:
            record = self.get(sweep_id)
            if record.state.terminal:
                raise Conflict(f"sweep {sweep_id} is already {record.state.value}")
            self._context(record).stop.set("cancel")
            if sweep_id not in self._running:  # queued: it never starts
                self._update(sweep_id, state=JobState.cancelled, finished_at=now())
        return self.get(sweep_id)

    def resume(self, sweep_id: str) -> SweepRecord:
        """Continue a cancelled or failed sweep: its stopped or failed trials resume from their
        last checkpoints, the trials not yet started start."""
        with self._lock:
            record = self.get(sweep_id)
            if record.state not in (JobState.cancelled, JobState.failed):
                raise Conflict(
                    f"sweep {sweep_id} is {record.state.value}; only cancelled or failed "
                    "sweeps resume"
                )
            if sweep_id in self._running:
                raise Conflict(f"sweep {sweep_id} is still stopping; resume it in a moment")
            self._check_capacity()
            self._update(sweep_id, state=JobState.queued, error=None, finished_at=None)
            self._enqueue(sweep_id)
        return self.get(sweep_id)

    def _check_capacity(self) -> None:
        with self._lock:
            pending = sum(not r.state.terminal for r in self._records.values())
        if pending >= self.settings.max_pending_sweeps:
            raise Busy.pending("sweeps", pending, SWEEP_RETRY_S)

    # --- storage ----------------------------------------------------------------------------
    def _dir(self, sweep_id: str) -> Path:
        if not valid_id(sweep_id):
            raise NotFound(f"no sweep {sweep_id!r}")
        return self.directory / sweep_id

    def _save(self, record: SweepRecord) -> None:
        # trials and best are read from Tune's table, not stored twice
        data = record.model_dump_json(indent=2, exclude={"trials", "best"})
        atomic_write(self._dir(record.id) / "record.json", data.encode())

    def _load(self) -> list[SweepRecord]:
        records = []
        for path in self.directory.glob("*/record.json"):
            try:
                records.append(SweepRecord.model_validate_json(path.read_bytes()))
            except (OSError, ValidationError):
                continue
        return sorted(records, key=lambda r: r.created_at)

    def _trials(self, sweep_id: str) -> list[TrialInfo]:
        path = self._dir(sweep_id) / "trials.json"
        try:
            return _TRIALS.validate_json(path.read_bytes())
        except (OSError, ValidationError):
            return []

    def _update(self, sweep_id: str, **changes: object) -> None:
        with self._lock:
            record = self._records[sweep_id]
            for key, value in changes.items():
                setattr(record, key, value)
            record.updated_at = now()
            try:
                self._save(record)
            except OSError as error:
                log.error("could not persist sweep %s: %s", sweep_id, error)

    # --- running a sweep ----------------------------------------------------------------------
    def _enqueue(self, sweep_id: str) -> None:
        self._executor.submit(self._run, sweep_id)

    def _context(self, record: SweepRecord) -> TrialContext:
        parent = None
        if record.mlflow.experiment_id and record.mlflow.run_id:
            parent = RunRef(record.mlflow.experiment_id, record.mlflow.run_id)
        return TrialContext(
            settings=self.settings,
            sweep_id=record.id,
            spec=record.spec,
            dataset=record.dataset,
            directory=self._dir(record.id),
            parent_run=parent or RunRef("", ""),
        )

    def _run(self, sweep_id: str) -> None:
        with self._lock:
            record = self._records[sweep_id]
            if record.state.terminal:  # cancelled while queued
                return
            self._running.add(sweep_id)
        try:
            self._update(sweep_id, state=JobState.running, started_at=record.started_at or now())
            self._open_parent(record)
            context = self._context(record)
            context.stop.clear()  # a shutdown's (or the cancel of a resumed sweep)
            self._fit(record, context)
            self._finish(record, context)
        except Exception as error:
            log.exception("sweep %s failed", sweep_id)
            self._update(
                sweep_id,
                state=JobState.failed,
                finished_at=now(),
                error=f"{type(error).__name__}: {error}",
            )
        finally:
            with self._lock:
                self._running.discard(sweep_id)

    def _open_parent(self, record: SweepRecord) -> None:
        """Create (or reopen) the sweep's parent run; its params are the sweep's settings."""
        spec = record.spec
        params = {
            "space": json.dumps(spec.model_dump(mode="json")["space"]),
            "metric": spec.metric,
            "mode": spec.mode,
            "trials": spec.trials,
            "max_concurrent": spec.max_concurrent,
            "scheduler": spec.scheduler,
            "grace_period": spec.grace_rounds,
            "reduction_factor": spec.reduction_factor,
            "seed": spec.seed,
        }
        params |= {f"base.{k}": v for k, v in spec.base.model_dump().items()}
        run = None
        if record.mlflow.experiment_id and record.mlflow.run_id:
            run = RunRef(record.mlflow.experiment_id, record.mlflow.run_id)
        writer = make_run_writer(
            self.settings,
            spec.base.task,
            run_name=f"sweep-{record.id[:8]}",
            params=params,
            tags={"sweep_id": record.id},
            run=run,
        )
        writer.open()
        if writer.run is None:
            raise Unavailable(f"MLflow refused the sweep's run: {writer.last_error}")
        self._update(
            record.id,
            mlflow=SweepMlflow(
                experiment_id=writer.run.experiment_id,
                run_id=writer.run.run_id,
                ui_url=run_url(self.settings.mlflow_ui_url, writer.run),
            ),
        )

    def _fit(self, record: SweepRecord, context: TrialContext) -> None:
        """Run (or restore and finish) the sweep's Tuner."""
        spec = record.spec
        trainable = tune.with_resources(
            tune.with_parameters(run_trial, context=context),
            tune.PlacementGroupFactory(trial_bundles(spec)),
        )
        path = context.directory / "tune"
        if tune.Tuner.can_restore(path):
            tuner = tune.Tuner.restore(
                str(path),
                trainable,
                resume_unfinished=True,
                resume_errored=True,
                param_space=spec.param_space(),
            )
        else:
            scheduler = (
                ASHAScheduler(
                    time_attr="round",
                    max_t=spec.base.rounds,
                    grace_period=spec.grace_rounds,
                    reduction_factor=spec.reduction_factor,
                )
                if spec.scheduler == "asha"
                else FIFOScheduler()
            )
            tuner = tune.Tuner(
                trainable,
                param_space=spec.param_space(),
                tune_config=tune.TuneConfig(
                    metric=spec.metric,
                    mode=spec.mode,
                    search_alg=BasicVariantGenerator(
                        max_concurrent=spec.max_concurrent, random_state=spec.seed
                    ),
                    scheduler=scheduler,
                    num_samples=spec.trials // spec.grid_size,
                ),
                run_config=tune.RunConfig(
                    name="tune",
                    storage_path=str(context.directory),
                    callbacks=[
                        TrialTable(
                            context.directory,
                            spec.metric,
                            spec.base.rounds,
                            self.settings.tracking_uri,
                        )
                    ],
                    failure_config=tune.FailureConfig(max_failures=0),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                    verbose=0,
                ),
            )
        tuner.fit()

    def _finish(self, record: SweepRecord, context: TrialContext) -> None:
        """Record how the sweep ended; alias the best trial's model; end the parent run."""
        reason = context.stop.reason()
        if reason == "shutdown":  # left running: restored at the next start
            return
        current = self.get(record.id)
        best = current.best
        failed = [t for t in current.trials if t.state == TrialState.failed]
        if reason == "cancel":
            state, status, error = JobState.cancelled, "KILLED", None
        elif failed:
            state, status = JobState.failed, "FAILED"
            error = f"{len(failed)} trials failed; trial {failed[0].id}: {failed[0].error}"
        else:
            state, status, error = JobState.succeeded, "FINISHED", None
        mlflow = current.mlflow
        if best is not None and state == JobState.succeeded:
            mlflow = self._mark_best(current, best)
        self._end_parent(current, best, status)
        self._update(record.id, state=state, finished_at=now(), error=error, mlflow=mlflow)

    def _mark_best(self, record: SweepRecord, best: TrialInfo) -> SweepMlflow:
        """Alias the best trial's registered model version `sweep-<id>`, and tag it."""
        client = MlflowClient(self.settings.tracking_uri, registry_uri=self.settings.tracking_uri)
        if best.run_id is None:
            return record.mlflow
        versions = client.search_model_versions(f"run_id = '{best.run_id}'")
        if not versions:  # a trial stopped early has no model; nor one whose MLflow was down
            log.warning("sweep %s: the best trial %s has no registered model", record.id, best.id)
            return record.mlflow
        version = versions[0]
        alias = f"sweep-{record.id}"
        client.set_registered_model_alias(version.name, alias, version.version)
        client.set_model_version_tag(version.name, version.version, "sweep_best", record.id)
        uri = f"models:/{version.name}@{alias}"
        return record.mlflow.model_copy(
            update={"model_uri": uri, "model_version": str(version.version)}
        )

    def _end_parent(self, record: SweepRecord, best: TrialInfo | None, status: str) -> None:
        run_id = record.mlflow.run_id
        if run_id is None:
            return
        client = MlflowClient(self.settings.tracking_uri)
        if best is not None and best.metric is not None:
            client.log_metric(run_id, f"best_{record.spec.metric}", best.metric)
            client.set_tag(run_id, "best_trial_id", best.id)
            if best.run_id:
                client.set_tag(run_id, "best_run_id", best.run_id)
        client.set_terminated(run_id, status=status)
