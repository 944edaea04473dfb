"""The FastAPI application: assembles the routers around one controller."""

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_client import CollectorRegistry

from api import auth, errors
from api.deps import known_query_only
from api.limits import BodyLimit
from api.routes import adaptations, evaluations, health, jobs, metrics, sweeps
from service.controller import Controller
from service.settings import Settings


def create_app(
    settings: Settings | None = None,
    controller_factory: Callable[[Settings, CollectorRegistry], Controller] = Controller,
) -> FastAPI:
    """The app; its lifespan builds, starts and shuts down `controller_factory(settings,
    registry)` (the tests pass an in-memory stand-in)."""
    settings = settings or Settings()
    registry = CollectorRegistry()  # per app: apps in one process must not share metrics

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        controller = controller_factory(settings, registry)
        controller.start()
        app.state.controller = controller
        yield
        controller.shutdown()

    app = FastAPI(
        title="Reptile meta-learning service",
        version="0.1.0",
        description="Meta-train with Reptile on Ray, tracked in MLflow; adapt to new tasks.",
        lifespan=lifespan,
        dependencies=[Depends(known_query_only)],
    )
    errors.install(app)
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(sweeps.router)
    app.include_router(adaptations.router)
    app.include_router(evaluations.router)
    metrics.install(app, registry)
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    # the docs pages and the schema they load stay open (api/auth.py says why)
    docs = {app.openapi_url, app.docs_url, app.swagger_ui_oauth2_redirect_url, app.redoc_url}
    public_paths = {"/healthz", "/readyz"} | {path for path in docs if path}
    if settings.api_token is not None:  # added last, so it runs first
        app.add_middleware(auth.BearerAuth, token=settings.api_token, public_paths=public_paths)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.update(adaptations.SCHEMA_COMPONENTS)
            components.update(errors.SCHEMA_COMPONENTS)
            if settings.api_token is not None:
                auth.declare(schema, public_paths)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
