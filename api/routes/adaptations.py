"""Adaptations: a few labelled examples of a new task in, adapted weights and predictions out.

Sine jobs take JSON points. Image jobs take JSON with base64 images, or multipart/form-data
(`support` files, `labels` fields in the same order, `query` files, optional `steps`, `lr`),
which is turned into the JSON form and validated by the same model.
"""

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from api import errors
from api.deps import ControllerDep
from api.routes.weights import WEIGHTS_RESPONSES, WeightsFormat, weights_response
from api.schemas import (
    MAX_ADAPTATION_STEPS,
    MAX_LR,
    MAX_QUERY_IMAGES,
    MAX_SUPPORT_IMAGES,
    AdaptationPublic,
    ImageAdaptationCreate,
    SineAdaptationCreate,
)
from service.specs import SineJobSpec

router = APIRouter(tags=["adaptations"], responses=errors.RESPONSES)

_BODY_SCHEMA = TypeAdapter(SineAdaptationCreate | ImageAdaptationCreate).json_schema(
    ref_template="#/components/schemas/{model}"
)
# The body is parsed by hand (JSON or multipart), so its models are added to the OpenAPI
# components by `api.main`.
SCHEMA_COMPONENTS: dict[str, Any] = _BODY_SCHEMA["$defs"]
_FORM_SCHEMA = {
    "type": "object",
    "required": ["support", "labels"],
    "properties": {
        "support": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "maxItems": MAX_SUPPORT_IMAGES,
        },
        "labels": {"type": "array", "items": {"type": "string"}, "maxItems": MAX_SUPPORT_IMAGES},
        "query": {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "maxItems": MAX_QUERY_IMAGES,
        },
        "steps": {"type": "integer", "minimum": 0, "maximum": MAX_ADAPTATION_STEPS},
        "lr": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_LR},
    },
}
_OPENAPI = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"anyOf": _BODY_SCHEMA["anyOf"]}},
            "multipart/form-data": {"schema": _FORM_SCHEMA},
        },
    }
}


def _validated(model: type[BaseModel], data: Any, strict: bool) -> Any:
    """`data` as `model`; strict for JSON (no `true` or "5" for a number), not for form text."""
    try:
        return model.model_validate(data, strict=strict)
    except ValidationError as error:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        ) from None


async def _form_body(request: Request) -> dict[str, Any]:
    """A multipart upload as the JSON form of an image adaptation."""
    form = await request.form(
        max_files=MAX_SUPPORT_IMAGES + MAX_QUERY_IMAGES, max_fields=MAX_SUPPORT_IMAGES + 10
    )

    async def encoded(name: str) -> list[str]:
        files = [f for f in form.getlist(name) if isinstance(f, UploadFile)]
        return [base64.b64encode(await f.read()).decode() for f in files]

    body: dict[str, Any] = {
        "support": {"images": await encoded("support"), "labels": form.getlist("labels")},
        "query": {"images": await encoded("query")},
    }
    for option in ("steps", "lr"):
        if option in form:
            body[option] = form[option]
    return body


@router.post(
    "/v1/jobs/{job_id}/adaptations",
    status_code=status.HTTP_201_CREATED,
    response_model=AdaptationPublic,
    openapi_extra=_OPENAPI,
)
async def create_adaptation(
    job_id: str, request: Request, controller: ControllerDep, response: Response
) -> AdaptationPublic:
    """Adapt the job's current φ (the latest round's while it runs) to the support set."""
    spec = controller.get(job_id).spec  # 404 first
    form = request.headers.get("content-type", "").startswith("multipart/form-data")
    if form:
        data: Any = await _form_body(request)
    else:
        try:
            data = await request.json()
        except ValueError as error:
            raise RequestValidationError(
                [{"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {error}"}]
            ) from None
    if isinstance(spec, SineJobSpec):
        points = _validated(SineAdaptationCreate, data, strict=not form)
        record = await run_in_threadpool(
            lambda: controller.adapt_points(
                job_id,
                x=points.support.x,
                y=points.support.y,
                query_x=points.query.x,
                steps=points.steps,
                lr=points.lr,
            )
        )
    else:
        images = _validated(ImageAdaptationCreate, data, strict=not form)
        record = await run_in_threadpool(
            lambda: controller.adapt_images(
                job_id,
                support=images.support.images,
                labels=images.support.labels,
                query=images.query.images,
                steps=images.steps,
                lr=images.lr,
            )
        )
    response.headers["Location"] = f"/v1/adaptations/{record.id}"
    return record


@router.get("/v1/adaptations/{adaptation_id}", response_model=AdaptationPublic)
def read_adaptation(adaptation_id: str, controller: ControllerDep) -> AdaptationPublic:
    return controller.adaptation(adaptation_id)


@router.get(
    "/v1/adaptations/{adaptation_id}/weights", responses=WEIGHTS_RESPONSES, response_class=Response
)
def adaptation_weights(
    adaptation_id: str,
    controller: ControllerDep,
    format: Annotated[WeightsFormat, Query()] = "safetensors",
) -> Response:
    record = controller.adaptation(adaptation_id)
    params = controller.adaptation_weights(adaptation_id)
    return weights_response(params, record.round, format, f"adaptation-{adaptation_id}")
