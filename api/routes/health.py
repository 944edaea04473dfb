"""Liveness and readiness: open to probes even when the API needs a token, so they tell no
secrets."""

from urllib.parse import urlsplit, urlunsplit

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
        "tracking_uri": _without_password(controller.settings.tracking_uri),
    }


def _without_password(uri: str) -> str:
    """`uri` with the password of its user info, if any, replaced by ***."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
