"""`reptile`: serve the API, train one job without a server, or drive a running service.

`serve` and `train` import their heavy dependencies (torch, Ray, MLflow, uvicorn) when they
run, so the client commands (`jobs …`, `adapt`) start in a fraction of a second.
"""

import json
import logging
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, NoReturn

import httpx
import typer
import yaml
from pydantic import ValidationError

from service.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, ReptileClient, ServiceError
from service.records import AdaptationRecord, ClassPrediction, JobRecord, JobState
from service.settings import Settings
from service.specs import AnyJobSpec, parse_spec

app = typer.Typer(help="Reptile meta-learning service", no_args_is_help=True)


def quiet_openmp() -> None:
    """Let idle OpenMP threads sleep soon in this process; call it before torch is imported.

    The controller shares the machine with its local actors. At libgomp's default spin count
    the helper thread of each torch op the controller ran on two threads (the meta-update,
    checks) spun on after it, at 80–90 % of a core during a sine job, on a core an actor
    needed: with 2 actors on 2 cores a round of 32 tasks took a median 8–15 ms through
    `reptile serve`, against 6.5–7.4 ms once idle threads slept. Not at once, though
    (OMP_WAIT_POLICY=PASSIVE): MKL runs even a 10×64 matmul on both threads, and waking a
    sleeping one cost ~50 µs an op, which made a sine adaptation 2.8× slower (15 against
    5.5 ms) and a sine evaluation's inner loops ~1.5×. With 1,000 spins before it sleeps
    (measured on 2 cores): a sine adaptation 7.5 ms, a Conv4 one (5-way 5-shot, 50 Adam
    steps) 0.64–0.92 s against 0.93–1.08 s with PASSIVE, the same round times, and a thread
    idle between rounds at ~7 % of a core. A wait policy or spin count set by the user is kept.
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "1000")


def _mlflow_ui(settings: Settings, port: int) -> subprocess.Popen[bytes]:
    """Start the MLflow UI on the service's store (a local SQLite file and artifact folder).

    Lean, as it shares the machine with the actors: one web worker (for one user's browser)
    and without MLflow's job runner (GenAI scoring and trace jobs, which this service does
    not use; the user may turn it back on). With MLflow's defaults it was 15 processes and
    3.1 GiB resident, and took ~35 s of CPU in its first 40 s, beside the first job; lean,
    2 processes, 0.5 GiB, and 6 s of CPU.
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


@app.command()
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


@app.command()
def train(
    job_file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, help="job.yaml or job.json")
    ],
    output: Annotated[Path | None, typer.Option(help="Where to write φ (safetensors)")] = None,
) -> None:
    """Run one job in this process (Ray workers, MLflow run), with a progress bar."""
    quiet_openmp()
    from tqdm import tqdm

    from service.adaptation import Source, image_shape
    from service.records import now
    from service.registry import register
    from service.runtime import make_pool, make_tracker, prepare_dataset
    from service.store import new_id
    from service.tracking import run_url
    from service.trainer import MetaTrainer, Progress
    from service.weights import write_weights
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
            tracker.set_tag("ray_nodes", ",".join(sorted(pool.node_ids)))
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


# --- a running service: jobs and adaptations through the HTTP API ---------------------------

jobs_app = typer.Typer(
    help="Submit, follow and control jobs on a running service", no_args_is_help=True
)
app.add_typer(jobs_app, name="jobs")

UrlOption = Annotated[
    str | None, typer.Option("--url", help=f"Service URL (default ${URL_ENV}, else {DEFAULT_URL})")
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help=f"Bearer token (default ${TOKEN_ENV})", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the record as JSON")]
JobId = Annotated[str, typer.Argument(help="Job id")]
ROUND_METRICS = ("meta_loss_before", "meta_loss_after", "tasks_per_s")


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


@contextmanager
def _service(url: str | None, token: str | None) -> Iterator[ReptileClient]:
    """A client whose errors end the command with a one-line message and exit status 1."""
    client = ReptileClient(url, token=token)
    try:
        with client:
            yield client
    except ServiceError as error:
        _fail(str(error))
    except httpx.TransportError as error:
        _fail(f"cannot reach the service at {client.url}: {error}")


def _table(rows: list[list[str]]) -> None:
    """Rows as left-aligned columns (the first row is usually the header)."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _numbers(values: dict[str, float], names: tuple[str, ...] | None = None) -> str:
    return "  ".join(f"{k}={v:.4g}" for k, v in values.items() if names is None or k in names)


def _follow(client: ReptileClient, job_id: str) -> None:
    """Print the job's rounds and evaluations as they come; exit status 1 unless it succeeds."""
    record, shown_round = None, -1
    shown_evaluation: dict[str, float] = {}
    for record in client.events(job_id):
        if record.round != shown_round:
            shown_round = record.round
            typer.echo(
                f"round {record.round}/{record.rounds}  {_numbers(record.metrics, ROUND_METRICS)}"
            )
        if record.evaluation and record.evaluation != shown_evaluation:
            shown_evaluation = record.evaluation
            typer.echo(f"evaluation  {_numbers(record.evaluation)}")
    if record is None:
        _fail(f"the event stream of job {job_id} ended without a record")
    typer.echo(f"job {job_id} {record.state.value}" + (f": {record.error}" if record.error else ""))
    if record.state != JobState.succeeded:
        raise typer.Exit(1)


@jobs_app.command("submit")
def submit_job(
    job_file: Annotated[
        str, typer.Argument(metavar="FILE|-", help="job.yaml or job.json; - reads standard input")
    ],
    wait: Annotated[bool, typer.Option(help="Follow the job's progress until it ends")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Submit a job (the server validates it) and print its id."""
    try:
        fields = read_job_file(job_file)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise typer.BadParameter(str(error), param_hint="FILE") from error
    with _service(url, token) as client:
        record = client.submit(fields)
        typer.echo(record.id)
        if wait:
            _follow(client, record.id)


@jobs_app.command("list")
def list_jobs(
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """List the service's jobs, oldest first."""
    with _service(url, token) as client:
        records = sorted(client.jobs(), key=lambda r: r.created_at)
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    rows = [["ID", "NAME", "TASK", "STATE", "ROUND", "META LOSS", "CREATED"]]
    for r in records:
        loss = r.metrics.get("meta_loss_after")
        rows.append(
            [
                r.id,
                r.spec.name or "-",
                r.spec.task,
                r.state.value,
                f"{r.round}/{r.rounds}",
                "-" if loss is None else f"{loss:.4g}",
                f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            ]
        )
    _table(rows)


def _show(record: JobRecord) -> None:
    rows = [
        ["id", record.id],
        ["name", record.spec.name or "-"],
        ["task", record.spec.task],
        ["state", record.state.value],
        ["round", f"{record.round}/{record.rounds}"],
        ["created", f"{record.created_at:%Y-%m-%d %H:%M:%S}"],
    ]
    if record.finished_at is not None:
        rows.append(["finished", f"{record.finished_at:%Y-%m-%d %H:%M:%S}"])
    if record.error:
        rows.append(["error", record.error])
    if record.mlflow.ui_url:
        rows.append(["mlflow", f"{record.mlflow.ui_url} ({record.mlflow.status})"])
    rows += [[name, f"{value:.4g}"] for name, value in record.metrics.items()]
    rows += [[name, f"{value:.4g}"] for name, value in record.evaluation.items()]
    _table(rows)


@jobs_app.command("show")
def show_job(
    job_id: JobId, url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """A job's state, latest metrics and evaluation, and MLflow link."""
    with _service(url, token) as client:
        record = client.get(job_id)
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
    else:
        _show(record)


@jobs_app.command("logs")
def job_logs(job_id: JobId, url: UrlOption = None, token: TokenOption = None) -> None:
    """Follow a job's progress (rounds, evaluations) until it ends; exit 1 unless it succeeds."""
    with _service(url, token) as client:
        _follow(client, job_id)


@jobs_app.command("cancel")
def cancel_job(job_id: JobId, url: UrlOption = None, token: TokenOption = None) -> None:
    """Stop a job after its current round, keeping φ."""
    with _service(url, token) as client:
        record = client.cancel(job_id)
    typer.echo(f"job {record.id}: cancel requested at round {record.round} ({record.state.value})")


@jobs_app.command("resume")
def resume_job(job_id: JobId, url: UrlOption = None, token: TokenOption = None) -> None:
    """Continue a cancelled or failed job from its last checkpoint."""
    with _service(url, token) as client:
        record = client.resume(job_id)
    typer.echo(f"job {record.id}: {record.state.value}, from its last checkpoint")


@jobs_app.command("weights")
def job_weights(
    job_id: JobId,
    out: Annotated[
        Path | None, typer.Option(help="Output file (default phi-<id>.safetensors)")
    ] = None,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Download the job's current meta-weights φ (safetensors)."""
    with _service(url, token) as client:
        path = client.download_weights(job_id, out or Path(f"phi-{job_id}.safetensors"))
    typer.echo(path)


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(value) for value in text.split(",")]
    except ValueError as error:
        raise typer.BadParameter(
            f"{error} (expected numbers: -1.5,0,2)", param_hint=option
        ) from None


def _labelled(items: list[str]) -> list[tuple[Path, str]]:
    """`PATH=LABEL` pairs (split at the last `=`) of existing image files."""
    pairs = []
    for item in items:
        path, _, label = item.rpartition("=")
        if not path or not label:
            raise typer.BadParameter(f"{item!r} is not PATH=LABEL", param_hint="--support")
        if not Path(path).is_file():
            raise typer.BadParameter(f"no image file {path!r}", param_hint="--support")
        pairs.append((Path(path), label))
    return pairs


def _show_adaptation(record: AdaptationRecord, queries: list[str]) -> None:
    loss = record.support_loss
    typer.echo(
        f"adaptation {record.id} of job {record.job_id} at round {record.round} "
        f"({record.steps} steps, lr {record.lr:g}): support loss "
        f"{loss['before']:.4g} -> {loss['after']:.4g}"
    )
    rows = []
    for query, prediction in zip(queries, record.predictions, strict=True):
        if isinstance(prediction, ClassPrediction):
            probability = prediction.probabilities[prediction.label]
            rows.append([query, prediction.label, f"{probability:.3f}"])
        else:
            rows.append([query, f"{prediction:.4g}"])
    if rows:
        header = ["QUERY", "LABEL", "PROBABILITY"] if len(rows[0]) == 3 else ["X", "PREDICTION"]
        _table([header, *rows])


@app.command()
def adapt(
    job_id: JobId,
    support_x: Annotated[
        str | None, typer.Option(help="Sine jobs: support inputs, comma-separated: -4,-2,0.5")
    ] = None,
    support_y: Annotated[str | None, typer.Option(help="Sine jobs: support targets")] = None,
    query_x: Annotated[str | None, typer.Option(help="Sine jobs: inputs to predict")] = None,
    support: Annotated[
        list[str] | None,
        typer.Option(help="Image jobs: a labelled image PATH=LABEL (repeat per image)"),
    ] = None,
    query: Annotated[
        list[Path] | None,
        typer.Option(exists=True, dir_okay=False, help="Image jobs: an image to classify (repeat)"),
    ] = None,
    steps: Annotated[int | None, typer.Option(help="Adaptation steps (default: the job's)")] = None,
    lr: Annotated[
        float | None, typer.Option(help="Adaptation step size (default: the job's)")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Save the adapted weights (safetensors)")] = None,
    url: UrlOption = None,
    token: TokenOption = None,
    as_json: JsonOption = False,
) -> None:
    """Adapt a job's φ to a new task: sine points or labelled images in, predictions out."""
    with _service(url, token) as client:
        if support:
            if support_x or support_y or query_x:
                raise typer.BadParameter("give either --support or --support-x/-y/--query-x")
            queries = query or []
            record = client.adapt_images(job_id, _labelled(support), queries, steps=steps, lr=lr)
            names = [str(path) for path in queries]
        else:
            if support_x is None or support_y is None or query_x is None:
                raise typer.BadParameter(
                    "give --support-x, --support-y and --query-x (sine jobs), "
                    "or --support PATH=LABEL (image jobs)"
                )
            inputs = _floats(query_x, "--query-x")
            record = client.adapt_points(
                job_id,
                x=_floats(support_x, "--support-x"),
                y=_floats(support_y, "--support-y"),
                query_x=inputs,
                steps=steps,
                lr=lr,
            )
            names = [f"{x:g}" for x in inputs]
        if out is not None:
            client.download_adaptation_weights(record.id, out)
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
        return
    _show_adaptation(record, names)
    if out is not None:
        typer.echo(f"adapted weights: {out}")
