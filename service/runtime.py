"""Wiring one job to its real collaborators: its data set, a Ray worker pool, an MLflow tracker.

Shared by the controller and `reptile train`, so both run and log a job the same way.
"""

from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.datasets import DatasetError, prepare_image_folder, prepare_omniglot
from service.run_writer import RunWriter
from service.settings import Settings
from service.specs import AnyJobSpec, ImageJobSpec, SineJobSpec
from service.tracking import ModelVersionRef, RunRef, Tracker
from workers.pool import WorkerPool


def prepare_dataset(settings: Settings, spec: AnyJobSpec, *, training: bool = True) -> str | None:
    """An image job's prepared data set (decoded once, cached by content); None for sine.

    Raises `DatasetError` (a ValueError) saying what is wrong with the path, the files, or
    (with `training`) the job's N-way K-shot needs against the classes found.
    """
    if isinstance(spec, SineJobSpec):
        return None
    try:
        source = Path(spec.data).expanduser()
    except RuntimeError as error:  # "~user" for a user without a home
        raise DatasetError(f"data {spec.data!r}: {error}") from error
    if not source.is_absolute():
        source = (settings.data_root or Path.cwd()) / source
    source = source.resolve()
    if settings.data_root is not None and not source.is_relative_to(settings.data_root):
        raise DatasetError(f"data {spec.data!r} lies outside the data root {settings.data_root}")
    cache = settings.data_dir / "datasets"
    needed = max(spec.shots, max(spec.eval_shots) + spec.queries)
    try:
        if spec.task == "omniglot":
            prepared = prepare_omniglot(source, cache, min_images=needed)
        else:
            prepared = prepare_image_folder(source, cache, min_images=needed)
    except OSError as error:  # a name too long, a folder it may not read, …
        raise DatasetError(f"data {spec.data!r} cannot be read: {error.strerror}") from error
    if training:
        check_families(spec, str(prepared), training=True)
    return str(prepared)


def check_families(spec: ImageJobSpec, dataset: str, *, training: bool) -> None:
    """Raise `DatasetError` unless the splits hold enough classes and images for the spec's
    N-way tasks (the training split too, with `training`): fail now, not in a worker."""
    try:
        if training:
            spec.family(dataset)
        for k in spec.eval_shots:
            spec.family(dataset, held_out_shots=k)
    except ValueError as error:
        raise DatasetError(str(error)) from error


def make_pool(
    settings: Settings,
    spec: AnyJobSpec,
    dataset: str | None,
    should_stop: Callable[[], bool] = lambda: False,
    task_options: dict[str, Any] | None = None,
) -> WorkerPool:
    """The job's actors, on its training family, or on the family of `task_options`."""
    return WorkerPool(
        task=spec.task,
        task_options=spec.task_options(dataset) if task_options is None else task_options,
        num_workers=spec.num_workers,
        num_gpus=spec.gpus_per_worker,
        round_timeout_s=settings.round_timeout_s,
        start_timeout_s=settings.actor_start_timeout_s,
        chunk_retries=settings.chunk_retries,
        should_stop=should_stop,
    )


def make_tracker(
    settings: Settings,
    spec: AnyJobSpec,
    *,
    run_name: str,
    tags: dict[str, str],
    staging_dir: Path,
    run: RunRef | None = None,
    on_run: Callable[[RunRef], None] = lambda run: None,
    on_model: Callable[[ModelVersionRef], None] = lambda model: None,
) -> Tracker:
    """The job's MLflow run in the experiment `reptile-<task>`; every spec field is a param."""
    writer = make_run_writer(
        settings,
        spec.task,
        run_name=run_name,
        params=spec.model_dump(),
        tags=tags,
        run=run,
        on_run=on_run,
        on_model=on_model,
    )
    return Tracker(writer, staging_dir)


def make_run_writer(
    settings: Settings,
    task: str,
    *,
    run_name: str,
    params: dict[str, Any],
    tags: dict[str, str],
    run: RunRef | None = None,
    on_run: Callable[[RunRef], None] = lambda run: None,
    on_model: Callable[[ModelVersionRef], None] = lambda model: None,
) -> RunWriter:
    """A run of the experiment `reptile-<task>` (a job's, an evaluation's, or a sweep's parent
    run)."""
    uri = settings.tracking_uri
    local = uri.startswith(("sqlite:", "file:")) or "://" not in uri
    return RunWriter(
        tracking_uri=uri,
        experiment=f"reptile-{task}",
        artifact_location=f"{settings.artifact_root}/{task}" if local else None,
        run_name=run_name,
        params=params,
        tags={"service": "reptile", **tags},
        run=run,
        on_run=on_run,
        on_model=on_model,
    )
