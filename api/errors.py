"""Errors mapped to HTTP answers with a message that says what is wrong (never a 500)."""

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from api.schemas import FieldErrors, Message
from service.controller import Busy, Conflict, Invalid, NotFound
from service.weights import CorruptCheckpoint


def _message(description: str) -> dict[str, Any]:
    return {"model": Message, "description": description}


# The error answers of the API's routes, declared in the OpenAPI schema.
RESPONSES: dict[int | str, dict[str, Any]] = {
    404: _message("No job or adaptation with that id"),
    409: _message("The request does not fit the job's current state"),
    413: _message("The request body is larger than the server's limit"),
    422: {
        "model": FieldErrors | Message,
        "description": "Invalid input: the fields at fault, or what the service cannot serve",
    },
    429: {
        **_message("The service is at one of its limits; retry after Retry-After seconds"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
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
    app.add_exception_handler(CorruptCheckpoint, _with_status(409))  # stored state unusable
    app.add_exception_handler(Busy, _busy)
