"""Errors mapped to HTTP answers with a message that says what is wrong (never a 500)."""

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.controller import Conflict, Invalid, NotFound, Unavailable
from service.weights import CorruptCheckpoint


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


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(NotFound, _with_status(404))
    app.add_exception_handler(Conflict, _with_status(409))
    app.add_exception_handler(Invalid, _with_status(422))
    app.add_exception_handler(CorruptCheckpoint, _with_status(409))  # stored state unusable
    app.add_exception_handler(Unavailable, _with_status(503))
