"""Liveness and readiness: open to probes even when the API needs a token, so they tell no
secrets."""

from fastapi import APIRouter

from api.deps import ControllerDep
from api.schemas import without_password
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
        "tracking_uri": without_password(controller.settings.tracking_uri),
    }
