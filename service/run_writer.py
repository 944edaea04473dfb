"""One job's MLflow run, written through `MlflowClient` with its explicit run id.

Each write is retried while it fails for a reason that passes (MLflow unreachable, a 5xx or 429
answer, a locked database, a full disk), reporting `degraded` meanwhile. What MLflow refuses for
good (a 4xx answer, e.g. a param value over its length limit) is logged, kept as `last_error`,
and left out, so that the records after it still reach the run.
"""

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode

log = logging.getLogger(__name__)

# Fail fast against an unreachable tracking server; this module does its own retrying.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

# Marks an experiment as a model-training one, not a GenAI one, for the MLflow UI.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING = "custom_model_development"

T = TypeVar("T")


@dataclass(frozen=True)
class RunRef:
    experiment_id: str
    run_id: str


@dataclass(frozen=True)
class ModelVersionRef:
    """A version of a registered model."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


class RunWriter:
    """Writes one job's run from one thread; each method returns once its write is done or
    refused (and recorded), never raising MLflow's errors."""

    def __init__(
        self,
        *,
        tracking_uri: str,
        experiment: str,
        artifact_location: str | None,
        run_name: str,
        params: dict[str, Any],
        tags: dict[str, str],
        run: RunRef | None = None,
        on_run: Callable[[RunRef], None] = lambda run: None,
        on_model: Callable[[ModelVersionRef], None] = lambda model: None,
        retry_seconds: float = 2.0,
    ) -> None:
        self._client = MlflowClient(tracking_uri=tracking_uri)
        self._experiment = experiment
        self._artifact_location = artifact_location
        self.run_name = run_name
        self._params = params
        self._tags = tags
        self._on_run = on_run
        self._on_model = on_model
        self._retry_seconds = retry_seconds
        self.run = run
        self.model: ModelVersionRef | None = None  # set once the model is registered
        self.degraded = False
        self._outage: str | None = None  # why MLflow is unreachable, while it is
        self._refusal: str | None = None  # the latest write MLflow refused for good

    @property
    def last_error(self) -> str | None:
        """The error to show on the job: MLflow's current one while tracking is degraded, else
        the latest write that MLflow refused and that was left out (kept to the end)."""
        return self._outage or self._refusal

    def open(self) -> None:
        """Reopen the job's run, or create it with its params and tags (any that MLflow
        refuses are left out, and recorded: the run is created all the same). `run` stays
        None when MLflow refuses the run itself."""
        if self.run is not None:
            run_id = self.run.run_id
            self._attempt("the run", lambda: self._client.get_run(run_id))
            return
        try:
            experiment_id = self._retrying(self._experiment_id)
            run = self._retrying(
                lambda: self._client.create_run(experiment_id, run_name=self.run_name)
            )
        except MlflowException as error:  # only what MLflow refuses for good gets this far
            self._refused("the run", error)
            return
        self.run = RunRef(experiment_id=experiment_id, run_id=run.info.run_id)
        params = [Param(key, str(value)) for key, value in self._params.items()]
        self.log_batch([*params, *(RunTag(key, value) for key, value in self._tags.items())])
        self._on_run(self.run)

    def log_batch(self, entries: Sequence[Metric | Param | RunTag]) -> None:
        """Log `entries` in one call; when MLflow refuses it, one at a time, leaving out (and
        recording) each entry that MLflow refuses."""
        run_id = self._run_id()

        def log_batch(part: Sequence[Metric | Param | RunTag]) -> None:
            self._client.log_batch(
                run_id,
                metrics=[e for e in part if isinstance(e, Metric)],
                params=[e for e in part if isinstance(e, Param)],
                tags=[e for e in part if isinstance(e, RunTag)],
            )

        try:
            self._retrying(lambda: log_batch(entries))
        except MlflowException as error:
            if len(entries) > 1:
                for entry in entries:
                    self.log_batch([entry])
                return
            kind = {Metric: "metric", Param: "param", RunTag: "tag"}[type(entries[0])]
            self._refused(f"{kind} {entries[0].key!r}", error)

    def log_artifact(self, local_path: Path, artifact_dir: str) -> None:
        run_id = self._run_id()
        self._attempt(
            f"artifact {str(PurePosixPath(artifact_dir) / local_path.name)!r}",
            lambda: self._client.log_artifact(run_id, str(local_path), artifact_dir),
        )

    def set_tag(self, key: str, value: str) -> None:
        run_id = self._run_id()
        self._attempt(f"tag {key!r}", lambda: self._client.set_tag(run_id, key, value))

    def register(
        self, local_dir: Path, name: str, *, tags: dict[str, str], description: str
    ) -> None:
        """Log the saved model in `local_dir` as the run's `model` artifacts and register it as
        a new version of `name` (created if missing)."""
        self._attempt(
            f"the model version of {name!r}",
            lambda: self._register(local_dir, name, tags, description),
        )

    def end(self, status: str) -> None:
        run_id = self._run_id()
        self._attempt(
            f"ending the run as {status}",
            lambda: self._client.set_terminated(run_id, status=status),
        )

    def _run_id(self) -> str:
        assert self.run is not None, "the run is open"
        return self.run.run_id

    def _retrying(self, action: Callable[[], T]) -> T:
        """`action()`, retried while it fails for a reason that passes; raises what MLflow
        refuses for good."""
        while True:
            try:
                result = action()
            except Exception as error:  # MLflow raises many types; most mean "not yet"
                if _refused(error):
                    raise
                if not self.degraded:
                    log.warning("MLflow unreachable (%s); buffering and retrying", error)
                self.degraded = True
                self._outage = str(error)
                time.sleep(self._retry_seconds)
                continue
            if self.degraded:
                log.info("MLflow reachable again; buffered records flushed")
            self.degraded = False
            self._outage = None
            return result

    def _attempt(self, what: str, action: Callable[[], object]) -> None:
        """`action()`, retried; when MLflow refuses it for good, recorded and left out."""
        try:
            self._retrying(action)
        except MlflowException as error:
            self._refused(what, error)

    def _refused(self, what: str, error: MlflowException) -> None:
        log.error("MLflow refused %s; left out: %s", what, error.message)
        self._refusal = f"MLflow refused {what}: {error.message}"

    def _experiment_id(self) -> str:
        """The service's experiment, created (or marked, when it lacks the mark) as a
        model-training experiment, so that the MLflow UI shows its runs as training runs."""
        experiment = self._client.get_experiment_by_name(self._experiment)
        if experiment is None:
            try:
                return self._client.create_experiment(
                    self._experiment,
                    artifact_location=self._artifact_location,
                    tags={EXPERIMENT_KIND_TAG: MODEL_TRAINING},
                )
            except MlflowException as error:
                if not _already_exists(error):
                    raise
                return self._experiment_id()  # another job created it meanwhile
        if EXPERIMENT_KIND_TAG not in experiment.tags:
            self._client.set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING
            )
        return experiment.experiment_id

    def _register(self, local_dir: Path, name: str, tags: dict[str, str], description: str) -> None:
        """Re-run after a failure until it succeeds: every step tolerates an earlier success."""
        run_id = self._run_id()
        if self.model is None:
            self._client.log_artifacts(run_id, str(local_dir), "model")
            try:
                self._client.create_registered_model(name)
            except MlflowException as error:
                if not _already_exists(error):
                    raise
            version = self._client.create_model_version(
                name,
                source=f"runs:/{run_id}/model",
                run_id=run_id,
                tags=tags,
                description=description,
            )
            self.model = ModelVersionRef(name, str(version.version))
        self._on_model(self.model)


def _refused(error: Exception) -> bool:
    """Whether MLflow refused a request for good: a 4xx answer other than 429 (too many
    requests). Anything else (no answer, a 5xx, a locked database, a full disk) may pass."""
    if not isinstance(error, MlflowException):
        return False
    status = error.get_http_status_code()
    return 400 <= status < 500 and status != 429


def _already_exists(error: MlflowException) -> bool:
    return error.error_code == ErrorCode.Name(RESOURCE_ALREADY_EXISTS)
