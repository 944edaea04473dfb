"""Wiring one job to its real collaborators: a Ray worker pool and an MLflow tracker.

Shared by the controller and `reptile train`, so both log the same way to the same store.
"""

from collections.abc import Callable
from pathlib import Path

from service.settings import Settings
from service.specs import JobSpec
from service.tracking import RunRef, Tracker
from workers.pool import WorkerPool


def make_pool(settings: Settings, spec: JobSpec) -> WorkerPool:
    return WorkerPool(
        task=spec.task,
        task_options=spec.task_options(),
        num_workers=spec.num_workers,
        round_timeout_s=settings.round_timeout_s,
        chunk_retries=settings.chunk_retries,
    )


def make_tracker(
    settings: Settings,
    spec: JobSpec,
    *,
    run_name: str,
    tags: dict[str, str],
    staging_dir: Path,
    run: RunRef | None = None,
    on_run: Callable[[RunRef], None] = lambda run: None,
) -> Tracker:
    """The job's MLflow run in the experiment `reptile-<task>`; every spec field is a param."""
    uri = settings.tracking_uri
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    return Tracker(
        tracking_uri=uri,
        experiment=f"reptile-{spec.task}",
        artifact_location=f"{settings.artifact_root}/{spec.task}" if local else None,
        run_name=run_name,
        params=spec.model_dump(),
        tags={"service": "reptile", **tags},
        staging_dir=staging_dir,
        run=run,
        on_run=on_run,
    )
