"""A cap on request bodies, enforced before the routes read them.

A declared `Content-Length` over the cap is refused at once, without reading the body; a body
without one (chunked) is counted as it streams in and refused when the count passes the cap,
so a client can never make the server buffer more than `max_bytes`. (FastAPI's own
`max_body_size` answers a declared oversize body in plain text, replacing any JSON answer.)
"""

from fastapi import HTTPException
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimit:
    """ASGI middleware: 413 with a JSON `detail` for a request body over `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body exceeds the {self.max_bytes}-byte limit of this server"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._too_large()}, status_code=413)
            await response(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # raised into the route's body read; FastAPI answers it like any HTTP error
                    raise HTTPException(413, self._too_large())
            return message

        await self.app(scope, counted, send)
