"""Service errors mapped to HTTP answers with a message that says what is wrong."""

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.controller import Conflict, Invalid, NotFound
from service.weights import CorruptCheckpoint


def install(app: FastAPI) -> None:
    def handler(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
        async def handle(request: Request, error: Exception) -> JSONResponse:
            return JSONResponse(status_code=status, content={"detail": str(error)})

        return handle

    app.add_exception_handler(NotFound, handler(404))
    app.add_exception_handler(Conflict, handler(409))
    app.add_exception_handler(Invalid, handler(422))
    app.add_exception_handler(CorruptCheckpoint, handler(409))  # stored state unusable
