"""Job and adaptation records: what the store persists.

The API answers with its own models (`api.schemas`), built on the `*Base` models here, so a
field added to a record for the server's use never reaches a client by accident.
"""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, Field

from service.specs import JobSpec
from service.sweep_specs import SweepSpec


class JobState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (JobState.succeeded, JobState.failed, JobState.cancelled)


def now() -> datetime:
    return datetime.now(UTC)


class MlflowInfo(BaseModel):
    """Where the job's run lives; ids are null until the run has been created."""

    experiment_id: str | None = None
    run_id: str | None = None
    ui_url: str | None = None
    status: str = Field(default="ok", description="'ok', or 'degraded' while MLflow is unreachable")
    error: str | None = None
    model_uri: str | None = Field(
        default=None,
        description="models:/<name>/<version> of the final φ, once registered (succeeded jobs)",
    )
    model_version: str | None = Field(default=None, description="That registered model version")


class JobBase(BaseModel):
    """A job's progress: the fields its stored record and its public answer share."""

    state: JobState = JobState.queued
    round: int = Field(default=0, description="Rounds completed")
    rounds: int
    metrics: dict[str, float] = Field(default_factory=dict, description="Latest round's metrics")
    evaluation: dict[str, float] = Field(default_factory=dict, description="Latest evaluation")
    checkpoint_round: int | None = Field(default=None, description="Round of the last checkpoint")
    error: str | None = None
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class JobRecord(JobBase):
    """What the store persists of a job, server internals included (`dataset` is a path on
    the server: API answers leave it out)."""

    id: str
    spec: JobSpec
    dataset: str | None = Field(
        default=None, description="An image job's prepared data set (made from spec.data)"
    )
    mlflow: MlflowInfo = Field(default_factory=MlflowInfo)


class ClassPrediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class AdaptationBase(BaseModel):
    """An adaptation's result: the fields its stored record and its public answer share."""

    id: str
    job_id: str
    model: str | None = Field(
        default=None, description="models:/<name>/<version> when φ came from the model registry"
    )
    round: int = Field(description="The job's round whose φ was adapted")
    steps: int
    lr: float
    support_loss: dict[str, float] = Field(description="{'before': …, 'after': …}")
    predictions: list[float] | list[ClassPrediction] = Field(
        description="Per query input: a value (regression) or a label with probabilities"
    )
    created_at: datetime = Field(default_factory=now)


class AdaptationRecord(AdaptationBase):
    """What the store persists of an adaptation (its weights lie beside it)."""


class TrialState(StrEnum):
    pending = "pending"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"  # ran every round
    stopped = "stopped"  # stopped early by the scheduler (ASHA)
    cancelled = "cancelled"  # stopped by a cancel or shutdown of its sweep; resumes with it
    failed = "failed"


class TrialInfo(BaseModel):
    """One trial of a sweep, as Tune last reported it."""

    id: str
    params: dict[str, Any] = Field(description="The space's values for this trial")
    state: TrialState
    round: int = Field(default=0, description="Rounds reached at its last evaluation")
    rounds: int = Field(description="Its budget: the base job's rounds")
    metric: float | None = Field(default=None, description="The sweep's metric, last reported")
    run_id: str | None = Field(default=None, description="Its MLflow run (a child of the sweep's)")
    error: str | None = None


class SweepMlflow(BaseModel):
    """The sweep's parent run and the best trial's registered model."""

    experiment_id: str | None = None
    run_id: str | None = None
    ui_url: str | None = None
    model_uri: str | None = Field(default=None, description="models:/<name>@<alias> of the best")
    model_version: str | None = None


class SweepBase(BaseModel):
    """A sweep's progress: the fields its stored record and its public answer share."""

    state: JobState = JobState.queued
    trials: list[TrialInfo] = Field(default_factory=list)
    best: TrialInfo | None = Field(default=None, description="The best trial so far")
    error: str | None = None
    created_at: datetime = Field(default_factory=now)
    updated_at: datetime = Field(default_factory=now)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class SweepRecord(SweepBase):
    """What the store persists of a sweep (its trials are read from Tune's table)."""

    id: str
    spec: SweepSpec
    dataset: str | None = None
    mlflow: SweepMlflow = Field(default_factory=SweepMlflow)
