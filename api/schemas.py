"""Request and response models of the HTTP API, named by role (Create / Public)."""

from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, Field

from service.adaptation_schemas import ImageAdaptationCreate, SineAdaptationCreate
from service.evaluation_schemas import EvaluationBase, EvaluationRecord
from service.records import (
    AdaptationBase,
    AdaptationRecord,
    JobBase,
    JobRecord,
    MlflowInfo,
    SweepBase,
    SweepMlflow,
    SweepRecord,
)
from service.specs import MODEL_URI_PATTERN, JobSpec
from service.sweep_specs import SweepSpec

JobCreate = JobSpec
SweepCreate = SweepSpec


def without_password(uri: str) -> str:
    """`uri` with the password of its user info, if any, replaced by ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class MlflowPublic(MlflowInfo):
    tracking_uri: str = Field(description="The service's MLflow store, any password masked")


class JobPublic(JobBase):
    """A job as clients see it: no server paths, no secrets."""

    id: str
    spec: JobSpec
    mlflow: MlflowPublic

    @classmethod
    def of(cls, record: JobRecord, tracking_uri: str) -> "JobPublic":
        mlflow = MlflowPublic(
            **record.mlflow.model_dump(), tracking_uri=without_password(tracking_uri)
        )
        fields = {name: getattr(record, name) for name in JobBase.model_fields}
        return cls(**fields, id=record.id, spec=record.spec, mlflow=mlflow)


class SweepMlflowPublic(SweepMlflow):
    tracking_uri: str = Field(description="The service's MLflow store, any password masked")


class SweepPublic(SweepBase):
    """A sweep as clients see it: no server paths."""

    id: str
    spec: SweepSpec
    mlflow: SweepMlflowPublic

    @classmethod
    def of(cls, record: SweepRecord, tracking_uri: str) -> "SweepPublic":
        mlflow = SweepMlflowPublic(
            **record.mlflow.model_dump(), tracking_uri=without_password(tracking_uri)
        )
        fields = {name: getattr(record, name) for name in SweepBase.model_fields}
        return cls(**fields, id=record.id, spec=record.spec, mlflow=mlflow)


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int


class AdaptationPublic(AdaptationBase):
    @classmethod
    def of(cls, record: AdaptationRecord) -> "AdaptationPublic":
        return cls(**dict(record))  # every field of a record is public


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# The body of a job's adaptation (`SineAdaptationCreate`, `ImageAdaptationCreate`) is
# service's: the registered models' pyfunc validates the same body.

ModelUri = Annotated[
    str,
    Field(
        max_length=300,
        pattern=MODEL_URI_PATTERN,
        description="models:/<name>@<alias> (@latest: the newest version) or "
        "models:/<name>/<version>",
        examples=["models:/reptile-sine@latest"],
    ),
]


class ModelAdaptationCreate(BaseModel):
    """`POST /v1/adaptations`: the registered model to adapt (read before the rest of the body,
    whose form depends on the model's task family)."""

    model: ModelUri


class SineModelAdaptationCreate(SineAdaptationCreate):
    """`POST /v1/adaptations` to a sine model: a sine job adaptation's body plus `model`."""

    model: ModelUri


class ImageModelAdaptationCreate(ImageAdaptationCreate):
    """`POST /v1/adaptations` to an image model: an image job adaptation's body plus `model`."""

    model: ModelUri


class WeightsJSON(BaseModel):
    """Weights as JSON: per tensor its shape and flat values."""

    round: int | None = None
    tensors: dict[str, dict[str, list[int] | list[float]]]


class Message(BaseModel):
    detail: str


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str
    input: Any = None
    ctx: Any = None


class FieldErrors(BaseModel):
    """A request that failed validation: one entry per wrong field."""

    detail: list[FieldError]


class EvaluationPublic(EvaluationBase):
    """An evaluation as clients see it: no server paths."""

    @classmethod
    def of(cls, record: EvaluationRecord) -> "EvaluationPublic":
        return cls(**{name: getattr(record, name) for name in EvaluationBase.model_fields})


class EvaluationsPublic(BaseModel):
    data: list[EvaluationPublic]
    count: int
