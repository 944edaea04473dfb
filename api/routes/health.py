"""Liveness and readiness."""

from fastapi import APIRouter

from api.deps import ControllerDep
from workers.cluster import total_resource

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
def readyz(controller: ControllerDep) -> dict[str, object]:
    return {
        "status": "ready",
        "ray_cpus": total_resource("CPU"),
        "ray_gpus": total_resource("GPU"),
        "tracking_uri": controller.settings.tracking_uri,
    }
