"""Prometheus metrics at `GET /metrics` (text exposition format), HTTP requests included."""

from fastapi import APIRouter, FastAPI, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import ControllerDep

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
def metrics(controller: ControllerDep) -> Response:
    """Jobs by state, rounds, running jobs' speed, adaptation latency, HTTP requests."""
    return Response(generate_latest(controller.metrics.registry), media_type=CONTENT_TYPE_LATEST)


class _CountRequests:
    """ASGI middleware: one count per answered request, by method, route template and status.

    The route template (`/v1/jobs/{job_id}`), not the path, keeps the label set small.
    """

    def __init__(self, app: ASGIApp, counter: Counter) -> None:
        self.app = app
        self.counter = counter

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                route = scope.get("route")  # set by the router on the shared scope
                template = getattr(route, "path", "unmatched")
                self.counter.labels(scope["method"], template, str(message["status"])).inc()
            await send(message)

        await self.app(scope, receive, counting_send)


def install(app: FastAPI, registry: CollectorRegistry) -> None:
    """Serve the registry at /metrics and count the app's HTTP requests in it."""
    requests = Counter(
        "reptile_http_requests",
        "HTTP requests answered",
        ["method", "route", "status"],
        registry=registry,
    )
    app.add_middleware(_CountRequests, counter=requests)
    app.include_router(router)
