"""`reptile serve` and `reptile train`: the commands that run the service's own parts here.

They import their heavy dependencies (torch, Ray, MLflow, uvicorn) when they run, so that the
client commands (`api.cli.remote`) start at once.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import typer
import yaml
from pydantic import ValidationError

from service.settings import Settings
from service.specs import AnyJobSpec, parse_spec


def quiet_openmp() -> None:
    """Let this process's idle OpenMP threads sleep after a short spin (`GOMP_SPINCOUNT=1000`)
    unless the user set a wait policy or spin count: the controller shares the cores with its
    actors, and sleeping at once (`OMP_WAIT_POLICY=PASSIVE`) slows its small ops.

    For this process only: libgomp reads the setting once, as torch loads it (here), and the
    variable then leaves the environment, so the Ray workers this process starts keep
    OpenMP's defaults (each runs on a core of its own, where the short spin slows its inner
    loops: docs/performance.md, the served path).
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    os.environ["GOMP_SPINCOUNT"] = "1000"
    import torch  # noqa: F401  (loads libgomp, which reads its settings now)

    del os.environ["GOMP_SPINCOUNT"]


def _mlflow_ui(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """Start the MLflow UI on the service's store (a local SQLite file and artifact folder).

    Lean, as it shares the machine with the actors: one web worker (for one user's browser) and
    without MLflow's job runner (GenAI scoring and trace jobs, which this service does not use;
    the user's `MLFLOW_SERVER_ENABLE_JOB_EXECUTION` wins).
    """
    from mlflow import MlflowClient

    # MLflow creates (or migrates) a new store's tables when it first opens it: here, so that
    # the UI and the API do not both do it at once (the loser of that race exits)
    MlflowClient(settings.tracking_uri).search_experiments(max_results=1)
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        settings.tracking_uri,
        "--default-artifact-root",
        settings.artifact_root,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    environment = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **os.environ}
    # in a session of its own: MLflow's server starts a web worker (and job runners, when
    # asked for), and `_stop_session` stops them all with it
    return subprocess.Popen(command, env=environment, start_new_session=True)


def _stop_session(process: subprocess.Popen[bytes], grace_s: float = 30) -> None:
    """SIGTERM a process started with `start_new_session` and every process of its group, wait
    up to `grace_s` for it, then SIGKILL whatever of the group is left."""
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    with suppress(subprocess.TimeoutExpired):
        process.wait(timeout=grace_s)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def _exit_on_signal(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default REPTILE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default REPTILE_PORT)")] = None,
    ui: Annotated[bool, typer.Option(help="Start the MLflow UI beside the API")] = True,
    ui_port: Annotated[int, typer.Option(help="MLflow UI port")] = 5000,
) -> None:
    """Start the API (local Ray and MLflow store unless RAY_ADDRESS / MLFLOW_TRACKING_URI)."""
    quiet_openmp()
    import uvicorn

    from api.main import create_app

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    local_store = settings.mlflow_tracking_uri is None
    if ui and local_store and "mlflow_ui_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"mlflow_ui_url": f"http://127.0.0.1:{ui_port}"})
    # uvicorn shuts down gracefully on SIGTERM, then raises it again for the handler it found:
    # as an exception, rather than the default handler's instant exit, it leaves through
    # `finally` below, so the MLflow UI stops with the API
    signal.signal(signal.SIGTERM, _exit_on_signal)
    mlflow_ui = _mlflow_ui(settings, ui_port) if ui and local_store else None
    if mlflow_ui is not None:
        print(f"MLflow UI: http://127.0.0.1:{ui_port}")
    try:
        uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port)
    finally:
        if mlflow_ui is not None:
            _stop_session(mlflow_ui)


class _YamlLoader(yaml.SafeLoader):
    """YAML with 1.2's numbers: `1e-3` is a float (PyYAML follows 1.1, where it is a string,
    which the strict job spec would refuse)."""


_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_job_file(source: str) -> dict[str, Any]:
    """The fields of a YAML or JSON job file (`-`: standard input, JSON being YAML too)."""
    if source == "-":
        data = yaml.load(sys.stdin, Loader=_YamlLoader)
    else:
        path = Path(source)
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.load(text, Loader=_YamlLoader)
    if not isinstance(data, dict | None):
        raise ValueError(f"a job file holds a mapping of job fields, not {type(data).__name__}")
    return data or {}


def load_spec(path: Path) -> AnyJobSpec:
    """A job spec from a job file, validated exactly like the API's request body."""
    return parse_spec(read_job_file(str(path)))


def train(
    job_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="job.yaml or job.json")
    ],
    output: Annotated[Path | None, typer.Option(help="Where to write φ (safetensors)")] = None,
) -> None:
    """Run one job in this process (Ray workers, MLflow run), with a progress bar.

    Ctrl-C stops it at the end of the round (the run ends KILLED, φ kept); a second one at once.
    """
    quiet_openmp()
    from tqdm import tqdm

    from service.records import JobState, now
    from service.runner import JobRunner
    from service.runtime import make_tracker, prepare_dataset
    from service.store import new_id
    from service.tracking import run_url
    from service.trainer import Progress
    from workers.cluster import connect

    try:
        spec = load_spec(job_file)
    except (ValidationError, ValueError, yaml.YAMLError) as error:
        raise typer.BadParameter(str(error), param_hint="JOB_FILE") from error
    settings = Settings()
    try:
        dataset = prepare_dataset(settings, spec)
    except ValueError as error:
        raise typer.BadParameter(f"data: {error}", param_hint="JOB_FILE") from error
    job_id = new_id()
    run_dir = settings.data_dir / "runs" / f"{now():%Y%m%d-%H%M%S}-{job_id[:8]}"
    output = output or run_dir / "weights.safetensors"
    run_dir.mkdir(parents=True)
    log_path = run_dir / "train.log"  # the whole story of a failure; the terminal gets a line
    logging.basicConfig(
        filename=log_path,
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    connect(settings.ray_address, settings.ray_num_cpus)
    tracker = make_tracker(
        settings,
        spec,
        run_name=spec.name or f"{spec.task}-{job_id[:8]}",
        tags={"job_id": job_id, "source": "cli"},
        staging_dir=run_dir / "mlflow-staging",
    )
    stop = _StopOnInterrupt()
    with tqdm(total=spec.rounds, unit="round") as bar:

        def on_progress(progress: Progress) -> None:
            bar.n = progress.round
            shown = progress.evaluation or progress.metrics
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(shown.items())[:3]}, refresh=True)

        runner = JobRunner(
            settings,
            job_id,
            spec,
            dataset,
            run_dir / "checkpoint.safetensors",
            output,
            tracker,
            on_progress=on_progress,
        )
        try:
            with stop:
                outcome = runner.run(should_stop=stop.requested)
        except KeyboardInterrupt:
            outcome = None
    if tracker.run is not None:
        print(f"MLflow run: {run_url(settings.mlflow_ui_url, tracker.run)}")
    if outcome is None or outcome.state == JobState.cancelled:
        reached = f" at round {outcome.round}; meta-weights: {output}" if outcome else ""
        fail(f"interrupted{reached}", code=130)
    if outcome.state == JobState.failed:
        fail(f"job failed: {outcome.error} (log: {log_path})")
    print(f"meta-weights: {output}")
    if tracker.model is not None:
        print(f"registered model: {tracker.model.uri}")
    if not outcome.tracked:
        print("warning: MLflow was unreachable; some records were not logged", file=sys.stderr)


class _StopOnInterrupt:
    """While entered, the first Ctrl-C asks the job to stop at the end of its round and a
    second one interrupts it at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self._requested = False

    def requested(self) -> bool:
        return self._requested

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self._requested:
            raise KeyboardInterrupt
        self._requested = True
        print("\nstopping at the end of the round (Ctrl-C again to stop now)", file=sys.stderr)

    def __enter__(self) -> "_StopOnInterrupt":
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc_info: object) -> None:
        signal.signal(signal.SIGINT, self._previous)


def fail(message: str, code: int = 1) -> NoReturn:
    """End the command with `error: message` on standard error and exit status `code`."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)
