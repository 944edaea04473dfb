"""Optional bearer-token authentication (`REPTILE_API_TOKEN`).

A middleware, not a route dependency: it answers before anything reads the request body, so
an unauthenticated client can neither upload nor learn anything from validation messages.
The health checks stay open for probes; so do the OpenAPI schema and its docs pages, which
hold no data and which the docs' "Authorize" button needs in order to take a token.
"""

import secrets
from typing import Any

from pydantic import SecretStr
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from api.errors import json_response

SCHEME = "bearerAuth"  # the security scheme's name in the OpenAPI schema


class BearerAuth:
    """ASGI middleware: 401 with `WWW-Authenticate: Bearer` unless the token matches."""

    def __init__(self, app: ASGIApp, token: SecretStr, public_paths: set[str]) -> None:
        self.app = app
        self.expected = token.get_secret_value().encode()
        self.public_paths = public_paths

    def _authorized(self, header: str) -> bool:
        scheme, _, credentials = header.partition(" ")
        given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
        return secrets.compare_digest(given, self.expected)  # constant time: no timing oracle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"] not in self.public_paths
            and not self._authorized(Headers(scope=scope).get("authorization", ""))
        ):
            response = JSONResponse(
                {"detail": "missing or invalid bearer token (Authorization: Bearer <token>)"},
                status_code=401,
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


def declare(schema: dict[str, Any], public_paths: set[str]) -> None:
    """Declare the bearer scheme in an OpenAPI schema: required everywhere but `public_paths`."""
    schema.setdefault("components", {})["securitySchemes"] = {
        SCHEME: {"type": "http", "scheme": "bearer", "description": "REPTILE_API_TOKEN"}
    }
    schema["security"] = [{SCHEME: []}]
    for path, operations in schema["paths"].items():
        for operation in operations.values():
            if path in public_paths:
                operation["security"] = []
            else:
                operation["responses"]["401"] = json_response("Missing or invalid bearer token")
