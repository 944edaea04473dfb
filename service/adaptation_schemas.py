"""The body of an adaptation: a new task's support set, its queries, optional `steps` and `lr`.

One pydantic model per task family validates it wherever it comes from: the HTTP API (JSON
strictly, a multipart upload leniently) and a registered model's pyfunc (a DataFrame row).
Base64 decoding and the support-set checks (non-empty, one label per image, one y per x) live
here only; what depends on the job (its `ways`, decoding the images) is `service.adaptation`'s.
"""

import base64
import binascii
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    FiniteFloat,
    PlainValidator,
    WithJsonSchema,
    model_validator,
)

from service.specs import AnyJobSpec, SineJobSpec

MAX_SUPPORT_POINTS = 1_000
MAX_QUERY_POINTS = 10_000
MAX_ADAPTATION_STEPS = 1000
MAX_LR = 100
MAX_SUPPORT_IMAGES = 500
MAX_QUERY_IMAGES = 1_000


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

    @property
    def examples(self) -> int:
        """Labelled support examples (what each adaptation step computes on)."""
        return len(self.support.x)


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

    The M distinct labels of the support set are the classes: 2 to 50, whatever the job's `ways`.
    """

    support: ImageSupport
    query: ImageQuery = ImageQuery()

    @property
    def examples(self) -> int:
        """Labelled support examples (what each adaptation step computes on)."""
        return len(self.support.images)


AdaptationCreate = SineAdaptationCreate | ImageAdaptationCreate


def parse_adaptation(spec: AnyJobSpec, data: Any, *, strict: bool) -> AdaptationCreate:
    """`data` as the body of an adaptation of a `spec` job (points for sine, images else);
    `strict`: no `true` or "5" for a number (JSON), else as lenient as form text needs.

    Raises pydantic's `ValidationError`, whose errors locate each wrong field.
    """
    model = SineAdaptationCreate if isinstance(spec, SineJobSpec) else ImageAdaptationCreate
    return model.model_validate(data, strict=strict)
