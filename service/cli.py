"""`reptile`: serve the API (with the MLflow UI beside it) or train one job without a server."""

import json
import logging
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn
import yaml
from pydantic import ValidationError
from tqdm import tqdm

from service.records import now
from service.settings import Settings
from service.specs import AnyJobSpec, parse_spec
from service.store import new_id
from service.tracking import run_url
from service.trainer import MetaTrainer, Progress
from service.weights import write_weights
from workers.cluster import connect

app = typer.Typer(help="Reptile meta-learning service", no_args_is_help=True)


def _mlflow_ui(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """Start the MLflow UI on the service's store (a local SQLite file and artifact folder)."""
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
    ]
    return subprocess.Popen(command)


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default REPTILE_HOST)")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default REPTILE_PORT)")] = None,
    ui: Annotated[bool, typer.Option(help="Start the MLflow UI beside the API")] = True,
    ui_port: Annotated[int, typer.Option(help="MLflow UI port")] = 5000,
) -> None:
    """Start the API (local Ray and MLflow store unless RAY_ADDRESS / MLFLOW_TRACKING_URI)."""
    from api.main import create_app  # the API is only needed by this command

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    local_store = settings.mlflow_tracking_uri is None
    if ui and local_store and "mlflow_ui_url" not in settings.model_fields_set:
        settings = settings.model_copy(update={"mlflow_ui_url": f"http://127.0.0.1:{ui_port}"})
    mlflow_ui = _mlflow_ui(settings, ui_port) if ui and local_store else None
    if mlflow_ui is not None:
        print(f"MLflow UI: http://127.0.0.1:{ui_port}")
    try:
        uvicorn.run(create_app(settings), host=host or settings.host, port=port or settings.port)
    finally:
        if mlflow_ui is not None:
            mlflow_ui.terminate()
            mlflow_ui.wait(timeout=30)


def load_spec(path: Path) -> AnyJobSpec:
    """A job spec from a YAML or JSON file, validated exactly like the API's request body."""
    text = path.read_text()
    data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    return parse_spec(data or {})


@app.command()
def train(
    job_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="job.yaml or job.json")
    ],
    output: Annotated[Path | None, typer.Option(help="Where to write φ (safetensors)")] = None,
) -> None:
    """Run one job in this process (Ray workers, MLflow run), with a progress bar."""
    from service.adaptation import Source, image_shape
    from service.registry import register
    from service.runtime import make_pool, make_tracker, prepare_dataset

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
    connect(settings.ray_address, settings.ray_num_cpus)
    tracker = make_tracker(
        settings,
        spec,
        run_name=spec.name or f"{spec.task}-{job_id[:8]}",
        tags={"job_id": job_id, "source": "cli"},
        staging_dir=run_dir / "mlflow-staging",
    )
    pool = make_pool(settings, spec, dataset)
    with tqdm(total=spec.rounds, unit="round") as bar:

        def on_progress(progress: Progress) -> None:
            bar.n = progress.round
            shown = progress.evaluation or progress.metrics
            bar.set_postfix({k: f"{v:.3g}" for k, v in list(shown.items())[:3]}, refresh=True)

        trainer = MetaTrainer(
            spec,
            pool,
            tracker,
            run_dir / "checkpoint.safetensors",
            on_progress=on_progress,
            dataset=dataset,
        )
        try:
            trainer.run()
        finally:
            pool.shutdown()
    write_weights(output, trainer.phi)
    tracker.log_artifact(output.read_bytes(), "weights/phi.safetensors")
    final = Source(spec, trainer.phi, job_id, spec.rounds, image_shape(spec, dataset))
    register(tracker, final, trainer.history[-1])
    flushed = tracker.finish("FINISHED", timeout=60)
    print(f"meta-weights: {output}")
    if tracker.run is not None:
        print(f"MLflow run: {run_url(settings.mlflow_ui_url, tracker.run)}")
    if tracker.model is not None:
        print(f"registered model: {tracker.model.uri}")
    if not flushed:
        print("warning: MLflow was unreachable; some records were not logged", file=sys.stderr)
