"""An in-memory stand-in for `service.controller.Controller`: the API without Ray or MLflow.

It implements what the routes call, with the controller's rules that decide an answer's status
(unknown ids, states that refuse a cancel or resume, the pending-job and adaptation limits, a
cluster too small for a job, a full disk), and raises the controller's own exceptions. Jobs never
train: a test moves one on with `finish`, which records what the job runner would have.
"""

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from api.main import create_app
from reptile.params import Params
from service.adaptation import ImageShape, Source, adaptation_config
from service.adaptation_schemas import AdaptationCreate, SineAdaptationCreate
from service.controller import Controller
from service.errors import (
    Busy,
    Conflict,
    Invalid,
    NotFound,
    Unavailable,
)
from service.metrics import ServiceMetrics
from service.records import AdaptationRecord, ClassPrediction, JobRecord, JobState, now
from service.settings import Settings
from service.specs import AnyJobSpec, SineJobSpec, registered_model_name
from service.store import new_id
from service.sweeps import Sweeps
from service.tracking import RunRef, run_url

# What `finish` gives a job as its meta-weights φ: small, and every value distinct.
PHI: Params = {
    "layer.weight": torch.arange(6, dtype=torch.float32).reshape(3, 2),
    "layer.bias": torch.tensor([0.5, -1.0, 2.0]),
}
DISK_FULL = "[Errno 28] No space left on device"


@dataclass(frozen=True)
class Adapted:
    """What one `adapt` call received from a route."""

    source: Source
    body: AdaptationCreate


class InMemoryController:
    """The controller's interface over dicts; the same constructor as `Controller`."""

    def __init__(
        self, settings: Settings, metrics_registry: CollectorRegistry | None = None
    ) -> None:
        self.settings = settings
        self.metrics = ServiceMetrics(self.jobs, metrics_registry)
        self.cluster_cpus = 4  # what the real controller asks Ray for
        self.disk_full = False  # True: storing a job or an adaptation fails
        self.adaptations_running = 0  # counted against `max_concurrent_adaptations`
        self.started = self.stopped = False
        self.adapted: list[Adapted] = []
        self._jobs: dict[str, JobRecord] = {}
        self._weights: dict[str, tuple[Params, int]] = {}
        self._models: dict[str, Source] = {}  # by models:/ URI, version and @latest
        self._adaptations: dict[str, tuple[AdaptationRecord, Params]] = {}
        # the real sweeps: their checks need no Ray; a sweep that passes them would start Tune,
        # which the API tests never submit
        self.sweeps = Sweeps(settings)

    def start(self) -> None:
        self.started = True

    def shutdown(self) -> None:
        self.stopped = True

    # --- jobs ---------------------------------------------------------------------------
    def submit(self, spec: AnyJobSpec) -> JobRecord:
        self._check_capacity()
        if spec.num_workers > self.cluster_cpus:
            raise Invalid(
                f"num_workers={spec.num_workers} needs {spec.num_workers} CPUs; "
                f"the Ray cluster has {self.cluster_cpus}"
            )
        self._check_disk("cannot store the job")
        job_id = new_id()
        # an image job's data set is prepared into the data dir, as the real controller does
        dataset = None
        if not isinstance(spec, SineJobSpec):
            dataset = str(self.settings.data_dir / "datasets" / f"{spec.task}-{job_id}.npz")
        self._jobs[job_id] = JobRecord(
            id=job_id,
            spec=spec,
            dataset=dataset,
            rounds=spec.rounds,
        )
        return self.get(job_id)

    def get(self, job_id: str) -> JobRecord:
        if job_id not in self._jobs:
            raise NotFound(f"no job {job_id!r}")
        return self._jobs[job_id].model_copy(deep=True)

    def jobs(self) -> list[JobRecord]:
        return [record.model_copy(deep=True) for record in self._jobs.values()]

    def cancel(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.state.terminal:
            raise Conflict(f"job {job_id} is already {record.state.value}")
        self._update(job_id, state=JobState.cancelled, finished_at=now())
        return self.get(job_id)

    def resume(self, job_id: str) -> JobRecord:
        record = self.get(job_id)
        if record.state not in (JobState.cancelled, JobState.failed):
            raise Conflict(
                f"job {job_id} is {record.state.value}; only cancelled or failed jobs resume"
            )
        self._check_capacity()
        self._update(job_id, state=JobState.queued, error=None, finished_at=None)
        return self.get(job_id)

    def weights(self, job_id: str) -> tuple[Params, int]:
        record = self.get(job_id)
        if job_id not in self._weights:
            raise Conflict(f"job {job_id} has no weights yet (it is {record.state.value})")
        return self._weights[job_id]

    def finish(
        self, job_id: str, state: JobState = JobState.succeeded, error: str | None = None
    ) -> JobRecord:
        """What the job runner records when a job ends: its round, φ and MLflow run, and for a
        succeeded job, a registered model version."""
        record = self.get(job_id)
        round_reached = record.rounds if state == JobState.succeeded else record.rounds // 2
        run = RunRef(experiment_id="1", run_id=new_id())
        mlflow = record.mlflow.model_copy(
            update={
                "experiment_id": run.experiment_id,
                "run_id": run.run_id,
                "ui_url": run_url(self.settings.mlflow_ui_url, run),
            }
        )
        self._weights[job_id] = ({n: t.clone() for n, t in PHI.items()}, round_reached)
        if state == JobState.succeeded:
            name = registered_model_name(record.spec)
            version = 1 + sum(uri.startswith(f"models:/{name}/") for uri in self._models)
            mlflow.model_uri, mlflow.model_version = f"models:/{name}/{version}", str(version)
            source = Source(
                record.spec,
                PHI,
                job_id,
                round_reached,
                self._image_shape(record.spec),
                model=mlflow.model_uri,
            )
            self._models[mlflow.model_uri] = self._models[f"models:/{name}@latest"] = source
        self._update(
            job_id,
            state=state,
            round=round_reached,
            metrics={"meta_loss_after": 0.25},
            error=error,
            mlflow=mlflow,
            finished_at=now(),
        )
        return self.get(job_id)

    # --- adaptations ----------------------------------------------------------------------
    def job_source(self, job_id: str) -> Source:
        record = self.get(job_id)
        phi, round_reached = self.weights(job_id)
        return Source(record.spec, phi, job_id, round_reached, self._image_shape(record.spec))

    def model_source(self, uri: str) -> Source:
        if uri not in self._models:
            raise NotFound(f"no registered model version for {uri}")
        return self._models[uri]

    def adapt(self, source: Source, body: AdaptationCreate) -> AdaptationRecord:
        """Keep φ and predict without training: every query gets the support's mean value
        (regression) or its first label, all labels equally likely (classification)."""
        if self.adaptations_running >= self.settings.max_concurrent_adaptations:
            raise Busy.adaptations_running(self.settings.max_concurrent_adaptations)
        self.adapted.append(Adapted(source, body))
        predictions: list[float] | list[ClassPrediction]
        if isinstance(body, SineAdaptationCreate):
            ys = body.support.y
            mean = sum(ys) / len(ys)
            predictions = [mean] * len(body.query.x)
            loss = sum((y - mean) ** 2 for y in ys) / len(ys)
        else:
            classes = list(dict.fromkeys(body.support.labels))
            uniform = {label: 1 / len(classes) for label in classes}
            predictions = [ClassPrediction(label=classes[0], probabilities=uniform)] * len(
                body.query.images
            )
            loss = math.log(len(classes))
        config = adaptation_config(source.spec, body)
        self._check_disk("cannot store the adaptation")
        record = AdaptationRecord(
            id=new_id(),
            job_id=source.job_id,
            model=source.model,
            round=source.round,
            steps=config.steps,
            lr=config.lr,
            support_loss={"before": loss, "after": loss},
            predictions=predictions,
        )
        self._adaptations[record.id] = (record, source.phi)
        return record

    def adaptation(self, adaptation_id: str) -> AdaptationRecord:
        if adaptation_id not in self._adaptations:
            raise NotFound(f"no adaptation {adaptation_id!r}")
        return self._adaptations[adaptation_id][0]

    def adaptation_weights(self, adaptation_id: str) -> Params:
        self.adaptation(adaptation_id)
        return self._adaptations[adaptation_id][1]

    # --- helpers --------------------------------------------------------------------------
    def _check_capacity(self) -> None:
        pending = sum(not r.state.terminal for r in self._jobs.values())
        if pending >= self.settings.max_pending_jobs:
            raise Busy.jobs_pending(pending)

    def _check_disk(self, what: str) -> None:
        if self.disk_full:
            raise Unavailable(f"{what}: {DISK_FULL}")

    def _update(self, job_id: str, **changes: object) -> None:
        record = self._jobs[job_id]
        for key, value in changes.items():
            setattr(record, key, value)
        record.updated_at = now()

    @staticmethod
    def _image_shape(spec: AnyJobSpec) -> ImageShape | None:
        """Omniglot's geometry (28×28 grey) or Mini-ImageNet's (84×84 RGB); None for sine."""
        if isinstance(spec, SineJobSpec):
            return None
        return ImageShape(28, 1) if spec.task == "omniglot" else ImageShape(84, 3)


@contextmanager
def api_client(settings: Settings) -> Iterator[tuple[TestClient, InMemoryController]]:
    """The real app (routers, middleware, error handlers) around an `InMemoryController`,
    through FastAPI's in-process `TestClient`; the app's lifespan runs for the block."""
    controllers: list[InMemoryController] = []

    def factory(settings: Settings, registry: CollectorRegistry) -> Controller:
        controllers.append(InMemoryController(settings, registry))
        return cast(Controller, controllers[-1])  # it has every method the routes call

    with TestClient(create_app(settings, controller_factory=factory)) as client:
        yield client, controllers[0]
