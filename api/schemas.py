"""Request and response models of the HTTP API, named by role (Create / Public)."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from service.records import AdaptationRecord, JobRecord
from service.specs import JobSpec

MAX_SUPPORT_POINTS = 1_000
MAX_QUERY_POINTS = 10_000
MAX_ADAPTATION_STEPS = 10_000

JobCreate = JobSpec
JobPublic = JobRecord
AdaptationPublic = AdaptationRecord


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class SineSupport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_SUPPORT_POINTS)]
    y: Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_SUPPORT_POINTS)]

    @model_validator(mode="after")
    def _same_length(self) -> "SineSupport":
        if len(self.x) != len(self.y):
            raise ValueError(f"support.x has {len(self.x)} points but support.y has {len(self.y)}")
        return self


class SineQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    x: Annotated[list[FiniteFloat], Field(min_length=1, max_length=MAX_QUERY_POINTS)]


class SineAdaptationCreate(BaseModel):
    """A new task's labelled support points and the inputs to predict after adaptation."""

    model_config = ConfigDict(extra="forbid")

    support: SineSupport
    query: SineQuery
    steps: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ADAPTATION_STEPS,
        description="Adaptation steps (default: the job's eval_steps)",
    )
    lr: FiniteFloat | None = Field(
        default=None, gt=0, le=100, description="Adaptation step size (default: the job's inner_lr)"
    )


class WeightsJSON(BaseModel):
    """Weights as JSON: per tensor its shape and flat values."""

    round: int | None = None
    tensors: dict[str, dict[str, list[int] | list[float]]]


class Message(BaseModel):
    detail: str
