"""Request and response models of the HTTP API, named by role (Create / Public)."""

import base64
import binascii
from typing import Annotated, Any
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from service.records import AdaptationBase, AdaptationRecord, JobBase, JobRecord, MlflowInfo
from service.specs import MODEL_URI_PATTERN, JobSpec

MAX_SUPPORT_POINTS = 1_000
MAX_QUERY_POINTS = 10_000
MAX_ADAPTATION_STEPS = 1000
MAX_LR = 100
MAX_SUPPORT_IMAGES = 500
MAX_QUERY_IMAGES = 1_000

JobCreate = JobSpec


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


class AdaptationPublic(AdaptationBase):
    @classmethod
    def of(cls, record: AdaptationRecord) -> "AdaptationPublic":
        return cls(**dict(record))  # every field of a record is public


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


class _AdaptationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    steps: int | None = Field(
        default=None,
        ge=0,
        le=MAX_ADAPTATION_STEPS,
        description="Adaptation steps (default: the job's eval_steps)",
    )
    lr: FiniteFloat | None = Field(
        default=None,
        gt=0,
        le=MAX_LR,
        description="Adaptation step size (default: the job's inner_lr)",
    )


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


class SineAdaptationCreate(_AdaptationOptions):
    """A new task's labelled support points and the inputs to predict after adaptation."""

    support: SineSupport
    query: SineQuery


def _strict_base64(value: object) -> bytes:
    """Decode standard base64, rejecting stray characters (lenient decoders drop them)."""
    if not isinstance(value, str):
        raise ValueError("an image must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise ValueError(f"invalid base64: {error}") from error


Base64Image = Annotated[
    bytes,
    PlainValidator(_strict_base64),
    WithJsonSchema({"type": "string", "contentEncoding": "base64"}),
]
Label = Annotated[str, Field(min_length=1, max_length=200)]


class ImageSupport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: Annotated[list[Base64Image], Field(min_length=1, max_length=MAX_SUPPORT_IMAGES)]
    labels: Annotated[list[Label], Field(min_length=1, max_length=MAX_SUPPORT_IMAGES)]

    @model_validator(mode="after")
    def _one_label_per_image(self) -> "ImageSupport":
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} support images but {len(self.labels)} labels")
        return self


class ImageQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: Annotated[list[Base64Image], Field(max_length=MAX_QUERY_IMAGES)] = []


class ImageAdaptationCreate(_AdaptationOptions):
    """Labelled support images (base64 PNG/JPEG) of a new task, and query images to classify.

    The N distinct labels of the support set are the classes (N must be the job's `ways`).
    """

    support: ImageSupport
    query: ImageQuery = ImageQuery()


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
