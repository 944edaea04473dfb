"""Adaptations: a few labelled examples of a new task in, adapted weights and predictions out.

φ is a job's (`POST /v1/jobs/{id}/adaptations`) or a registered model's (`POST /v1/adaptations`
with `"model": "models:/…"`), through one code path. Sine jobs take JSON points. Image jobs take
JSON with base64 images, or multipart/form-data (`support` files, `labels` fields in the same
order, `query` files, optional `steps`, `lr`, `model`), which is turned into the JSON form and
validated by the same model (`service.adaptation_schemas`, which the registered models' pyfunc
validates its rows with too).
"""

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from starlette.datastructures import UploadFile

from api import errors
from api.deps import ControllerDep
from api.routes.weights import WEIGHTS_RESPONSES, WeightsFormat, weights_response
from api.schemas import (
    AdaptationPublic,
    ImageModelAdaptationCreate,
    ModelAdaptationCreate,
    SineModelAdaptationCreate,
)
from service.adaptation_schemas import (
    MAX_ADAPTATION_STEPS,
    MAX_LR,
    MAX_QUERY_IMAGES,
    MAX_SUPPORT_IMAGES,
    AdaptationCreate,
    parse_adaptation,
)
from service.specs import AnyJobSpec

router = APIRouter(tags=["adaptations"], responses=errors.RESPONSES)

_BODY_SCHEMA = TypeAdapter(AdaptationCreate).json_schema(
    ref_template="#/components/schemas/{model}"
)
# The body is parsed by hand (JSON or multipart), so its models are added to the OpenAPI
# components by `api.main`.
_MODEL_BODY_SCHEMA = TypeAdapter(
    SineModelAdaptationCreate | ImageModelAdaptationCreate
).json_schema(ref_template="#/components/schemas/{model}")
SCHEMA_COMPONENTS: dict[str, Any] = {**_BODY_SCHEMA["$defs"], **_MODEL_BODY_SCHEMA["$defs"]}
_FORM_SCHEMA: dict[str, Any] = {
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


def _openapi(json_schema: dict[str, Any], form_schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": json_schema},
                "multipart/form-data": {"schema": form_schema},
            },
        }
    }


_JOB_OPENAPI = _openapi({"anyOf": _BODY_SCHEMA["anyOf"]}, _FORM_SCHEMA)
_MODEL_OPENAPI = _openapi(
    {"anyOf": _MODEL_BODY_SCHEMA["anyOf"]},
    {
        **_FORM_SCHEMA,
        "required": ["model", *_FORM_SCHEMA["required"]],
        "properties": {**_FORM_SCHEMA["properties"], "model": {"type": "string"}},
    },
)


def _request_error(error: ValidationError) -> RequestValidationError:
    """A body's validation errors as FastAPI's own 422, located in the body."""
    return RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in error.errors()])


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
    for option in ("model", "steps", "lr"):
        if option in form:
            body[option] = form[option]
    return body


async def _body(request: Request) -> tuple[Any, bool]:
    """The request's JSON, or its multipart form in the JSON form; and whether it is to be
    validated strictly (JSON is; form fields are all text)."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await _form_body(request), False
    try:
        return await request.json(), True
    except ValueError as error:
        raise RequestValidationError(
            [{"type": "json_invalid", "loc": ("body",), "msg": f"invalid JSON: {error}"}]
        ) from None


def _adaptation(spec: AnyJobSpec, data: Any, strict: bool) -> AdaptationCreate:
    """The body as the adaptation of a `spec` job (points or images, after its family)."""
    try:
        return parse_adaptation(spec, data, strict=strict)
    except ValidationError as error:
        raise _request_error(error) from None


@router.post(
    "/v1/jobs/{job_id}/adaptations",
    status_code=status.HTTP_201_CREATED,
    response_model=AdaptationPublic,
    openapi_extra=_JOB_OPENAPI,
)
async def create_adaptation(
    job_id: str, request: Request, controller: ControllerDep, response: Response
) -> AdaptationPublic:
    """Adapt the job's current φ (the latest round's while it runs) to the support set."""
    spec = controller.get(job_id).spec  # 404 first
    data, strict = await _body(request)
    body = _adaptation(spec, data, strict)
    record = await run_in_threadpool(lambda: controller.adapt(controller.job_source(job_id), body))
    response.headers["Location"] = f"/v1/adaptations/{record.id}"
    return AdaptationPublic.of(record)


@router.post(
    "/v1/adaptations",
    status_code=status.HTTP_201_CREATED,
    response_model=AdaptationPublic,
    openapi_extra=_MODEL_OPENAPI,
    responses={404: {"description": "No such registered model, version or alias"}},
)
async def create_model_adaptation(
    request: Request, controller: ControllerDep, response: Response
) -> AdaptationPublic:
    """Adapt a registered model's φ (MLflow model registry) to the support set: the body of a
    job adaptation plus `model`. It outlives the job that trained it."""
    data, strict = await _body(request)
    try:
        model = ModelAdaptationCreate.model_validate(data, strict=strict).model
    except ValidationError as error:
        raise _request_error(error) from None
    source = await run_in_threadpool(controller.model_source, model)
    body = _adaptation(source.spec, {k: v for k, v in data.items() if k != "model"}, strict)
    record = await run_in_threadpool(lambda: controller.adapt(source, body))
    response.headers["Location"] = f"/v1/adaptations/{record.id}"
    return AdaptationPublic.of(record)


@router.get("/v1/adaptations/{adaptation_id}", response_model=AdaptationPublic)
def read_adaptation(adaptation_id: str, controller: ControllerDep) -> AdaptationPublic:
    return AdaptationPublic.of(controller.adaptation(adaptation_id))


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
