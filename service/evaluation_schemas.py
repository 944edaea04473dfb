"""The body and the record of an evaluation: a model scored on held-out tasks a user describes.

`POST /v1/jobs/{id}/evaluations` scores a job's φ, `POST /v1/evaluations` a registered model's
(the same body plus `model`). Every field is optional: by default the model's own data set,
held-out groups, queries, adaptation steps and lr are used, as its job evaluated.
"""

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat

from service.specs import MAX_WAYS, MODEL_URI_PATTERN

MAX_EVALUATION_TASKS = 10_000
MAX_SETTINGS = 4  # ways or shots listed: up to 16 settings, each scored on `tasks` tasks


class EvaluationCreate(BaseModel):
    """Which held-out tasks to score the model on, and how each adapts."""

    model_config = ConfigDict(extra="forbid", strict=True)

    data: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"^[^\x00]*$",
        description="Image set (relative: to the service's data root; default: the model's "
        "job's). Decoded as the model's task family decodes its data",
    )
    groups: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = Field(
        default=None,
        min_length=1,
        max_length=1000,
        description="Groups to draw classes from (Omniglot: alphabets; image folders: split "
        "folders). Default: the model's held-out groups on its own data, every group of other "
        "data",
    )
    ways: list[Annotated[int, Field(ge=2, le=MAX_WAYS)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SETTINGS,
        description="Classes per task, one setting each (default: the model's ways); any "
        "number, whatever the model trained with",
    )
    shots: list[Annotated[int, Field(ge=1, le=100)]] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_SETTINGS,
        description="Support images per class, one setting each (default: the model's eval_shots)",
    )
    queries: int | None = Field(
        default=None, ge=1, le=100, description="Query images per class (default: the model's)"
    )
    tasks: int = Field(
        default=200, ge=1, le=MAX_EVALUATION_TASKS, description="Held-out tasks per setting"
    )
    steps: int | None = Field(
        default=None, ge=1, le=1000, description="Adaptation steps (default: eval_steps)"
    )
    lr: FiniteFloat | None = Field(
        default=None, gt=0, le=100, description="Adaptation step size (default: inner_lr)"
    )
    transductive: bool | None = Field(
        default=None,
        description="Batch norm over the whole query set (default: the model's); false: the "
        "support set plus one query at a time",
    )
    num_workers: int | None = Field(
        default=None, ge=1, le=256, description="Ray actors (default: the model's job's)"
    )


class ModelEvaluationCreate(EvaluationCreate):
    """`POST /v1/evaluations`: a registered model's evaluation."""

    model: str = Field(
        max_length=300,
        pattern=MODEL_URI_PATTERN,
        description="models:/<name>@<alias> or models:/<name>/<version>",
        examples=["models:/reptile-omniglot@latest"],
    )


class EvaluationState(StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in (EvaluationState.succeeded, EvaluationState.failed)


class SettingResult(BaseModel):
    """Accuracy on the held-out tasks of one (ways, shots) setting."""

    ways: int
    shots: int
    accuracy: float
    ci95: float = Field(description="Half-width of the 95 % confidence interval over tasks")
    tasks: int


class EvaluationRun(BaseModel):
    """The evaluation's MLflow run, nested under the model's training run."""

    experiment_id: str | None = None
    run_id: str | None = None
    parent_run_id: str | None = None
    ui_url: str | None = None
    error: str | None = None


class EvaluationBase(BaseModel):
    id: str
    state: EvaluationState
    job_id: str
    model: str | None = None  # models:/<name>/<version> when scored from the registry
    round: int  # the job's round whose φ this is
    request: EvaluationCreate
    results: list[SettingResult] = []
    mlflow: EvaluationRun = EvaluationRun()
    error: str | None = None
    created_at: datetime
    finished_at: datetime | None = None


class EvaluationRecord(EvaluationBase):
    """What the store persists of an evaluation."""

    dataset: str  # the prepared data set
    held_out: list[str]  # the groups drawn from
