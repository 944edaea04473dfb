"""Errors mapped to HTTP answers with a message that says what is wrong (never a 500)."""

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import TypeAdapter
from starlette.exceptions import HTTPException
from starlette.routing import Match

from api.schemas import FieldErrors, Message
from service.adaptation import AdaptationError
from service.errors import Busy, Conflict, Invalid, NotFound, Unavailable
from service.weights import CorruptCheckpoint

# Error bodies are JSON whatever a route answers on success (an event stream, safetensors), so
# their content type is spelt out rather than left to FastAPI, which would use the route's.
_ERROR_SCHEMA = TypeAdapter(FieldErrors | Message).json_schema(
    ref_template="#/components/schemas/{model}"
)
SCHEMA_COMPONENTS: dict[str, Any] = _ERROR_SCHEMA["$defs"]
MESSAGE_SCHEMA = {"$ref": "#/components/schemas/Message"}


def json_response(description: str, schema: dict[str, Any] = MESSAGE_SCHEMA) -> dict[str, Any]:
    """An OpenAPI response with a JSON body (a `Message` unless `schema` says otherwise)."""
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# The error answers of the API's routes, declared in the OpenAPI schema.
RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {  # JSON from the app; plain text from the HTTP server for a malformed request
        "description": "The request could not be read (e.g. a body that is not UTF-8)",
        "content": {
            "application/json": {"schema": MESSAGE_SCHEMA},
            "text/plain": {"schema": {"type": "string"}},
        },
    },
    404: json_response("No job, sweep, adaptation or evaluation with that id"),
    409: json_response("The request does not fit the current state of the job or sweep"),
    413: json_response("The request body is larger than the server's limit"),
    422: json_response(
        "Invalid input: the fields at fault, or what the service cannot serve",
        {"anyOf": _ERROR_SCHEMA["anyOf"]},
    ),
    429: {
        **json_response("The service is at one of its limits; retry after Retry-After seconds"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
    503: json_response(
        "The service cannot serve this now: its disk is full, or the MLflow model registry "
        "is unreachable"
    ),
}


def _json_safe(value: Any) -> Any:
    """`value` if it is strict JSON (no NaN/inf), else its repr: errors must always serialise."""
    try:
        json.dumps(jsonable_encoder(value), allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


async def _validation_error(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    details = [
        {**detail, "input": _json_safe(detail.get("input")), "ctx": _json_safe(detail.get("ctx"))}
        for detail in error.errors()
    ]
    return JSONResponse(status_code=422, content=jsonable_encoder({"detail": details}))


def _with_status(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def handle(request: Request, error: Exception) -> JSONResponse:
        return JSONResponse(status_code=status, content={"detail": str(error)})

    return handle


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


async def _method_not_allowed(request: Request, error: Exception) -> JSONResponse:
    """405 whose `Allow` lists every method of the path (Starlette names only the first route's)."""
    assert isinstance(error, HTTPException)
    allowed = [
        method
        for method in HTTP_METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] == Match.FULL
            for route in request.app.routes
        )
    ]
    return JSONResponse(
        status_code=405, content={"detail": error.detail}, headers={"Allow": ", ".join(allowed)}
    )


async def _busy(request: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, Busy)
    return JSONResponse(
        status_code=429,
        content={"detail": str(error)},
        headers={"Retry-After": str(error.retry_after_s)},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NotFound, _with_status(404))
    app.add_exception_handler(Conflict, _with_status(409))
    app.add_exception_handler(Invalid, _with_status(422))
    app.add_exception_handler(AdaptationError, _with_status(422))  # e.g. a diverged adaptation
    app.add_exception_handler(CorruptCheckpoint, _with_status(409))  # stored state unusable
    app.add_exception_handler(Unavailable, _with_status(503))
    app.add_exception_handler(Busy, _busy)
    app.add_exception_handler(405, _method_not_allowed)
