"""The client commands: `reptile jobs …`, `reptile sweeps …` and `reptile adapt` drive a running
service over HTTP.

They import no torch, Ray or MLflow, so they start at once.
"""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import httpx
import typer
import yaml

from api.cli.local import fail, read_job_file
from api.client import DEFAULT_URL, TOKEN_ENV, URL_ENV, ReptileClient, ServiceError
from api.schemas import AdaptationPublic, JobPublic, SweepPublic
from service.records import ClassPrediction, JobState

jobs_app = typer.Typer(
    help="Submit, follow and control jobs on a running service", no_args_is_help=True
)
sweeps_app = typer.Typer(
    help="Submit, follow and control hyperparameter sweeps (Ray Tune)", no_args_is_help=True
)
UrlOption = Annotated[
    str | None, typer.Option("--url", help=f"Service URL (default ${URL_ENV}, else {DEFAULT_URL})")
]
TokenOption = Annotated[
    str | None,
    typer.Option("--token", help=f"Bearer token (default ${TOKEN_ENV})", show_default=False),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the record as JSON")]
JobId = Annotated[str, typer.Argument(help="Job id")]
SweepId = Annotated[str, typer.Argument(help="Sweep id")]
ROUND_METRICS = ("meta_loss_before", "meta_loss_after", "tasks_per_s")


@contextmanager
def _service(url: str | None, token: str | None) -> Iterator[ReptileClient]:
    """A client whose errors end the command with a one-line message and exit status 1."""
    client = ReptileClient(url, token=token)
    try:
        with client:
            yield client
    except ServiceError as error:
        fail(str(error))
    except httpx.TransportError as error:
        fail(f"cannot reach the service at {client.url}: {error}")


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
        fail(f"the event stream of job {job_id} ended without a record")
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
    fields = _read_fields(job_file)
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


def _show(record: JobPublic) -> None:
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


def _read_fields(source: str) -> dict[str, object]:
    try:
        return read_job_file(source)
    except (OSError, ValueError, yaml.YAMLError) as error:
        raise typer.BadParameter(str(error), param_hint="FILE") from error


def _metric(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _follow_sweep(client: ReptileClient, sweep_id: str) -> None:
    """Print each trial change as it comes; exit status 1 unless the sweep succeeds."""
    record: SweepPublic | None = None
    shown: dict[str, tuple[str, int]] = {}
    for record in client.sweep_events(sweep_id):
        for trial in record.trials:
            if shown.get(trial.id) != (trial.state.value, trial.round):
                shown[trial.id] = (trial.state.value, trial.round)
                typer.echo(
                    f"trial {trial.id} {trial.state.value} round {trial.round}/{trial.rounds} "
                    f"{record.spec.metric}={_metric(trial.metric)}"
                )
    if record is None:
        fail(f"the event stream of sweep {sweep_id} ended without a record")
    best = f"; best trial {record.best.id}" if record.best else ""
    typer.echo(f"sweep {sweep_id} {record.state.value}{best}")
    if record.state != JobState.succeeded:
        raise typer.Exit(1)


@sweeps_app.command("submit")
def submit_sweep(
    sweep_file: Annotated[
        str,
        typer.Argument(metavar="FILE|-", help="sweep.yaml or sweep.json; - reads standard input"),
    ],
    wait: Annotated[bool, typer.Option(help="Follow the sweep's trials until it ends")] = False,
    url: UrlOption = None,
    token: TokenOption = None,
) -> None:
    """Submit a sweep (base job, space, metric…; the server validates it) and print its id."""
    fields = _read_fields(sweep_file)
    with _service(url, token) as client:
        record = client.submit_sweep(fields)
        typer.echo(record.id)
        if wait:
            _follow_sweep(client, record.id)


@sweeps_app.command("list")
def list_sweeps(
    url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """List the service's sweeps, oldest first."""
    with _service(url, token) as client:
        records = sorted(client.sweeps(), key=lambda r: r.created_at)
    if as_json:
        typer.echo(json.dumps([r.model_dump(mode="json") for r in records], indent=2))
        return
    rows = [["ID", "TASK", "STATE", "TRIALS", "METRIC", "BEST", "CREATED"]]
    for r in records:
        done = sum(t.state.value in ("succeeded", "stopped") for t in r.trials)
        rows.append(
            [
                r.id,
                r.spec.base.task,
                r.state.value,
                f"{done}/{r.spec.trials}",
                r.spec.metric,
                _metric(r.best.metric if r.best else None),
                f"{r.created_at:%Y-%m-%d %H:%M:%S}",
            ]
        )
    _table(rows)


@sweeps_app.command("show")
def show_sweep(
    sweep_id: SweepId, url: UrlOption = None, token: TokenOption = None, as_json: JsonOption = False
) -> None:
    """A sweep's state, its trials (params, state, rounds, metric) and the best one."""
    with _service(url, token) as client:
        record = client.sweep(sweep_id)
    if as_json:
        typer.echo(record.model_dump_json(indent=2))
        return
    typer.echo(
        f"sweep {record.id} {record.state.value}" + (f": {record.error}" if record.error else "")
    )
    if record.mlflow.ui_url:
        typer.echo(f"mlflow {record.mlflow.ui_url}")
    if record.mlflow.model_uri:
        typer.echo(f"best model {record.mlflow.model_uri}")
    names = list(record.spec.space)
    rows = [["TRIAL", *[n.upper() for n in names], "STATE", "ROUND", record.spec.metric.upper()]]
    for t in record.trials:
        best = " *" if record.best and t.id == record.best.id else ""
        params = [
            f"{t.params.get(n, '-'):.4g}"
            if isinstance(t.params.get(n), float)
            else str(t.params.get(n, "-"))
            for n in names
        ]
        rows.append(
            [t.id, *params, t.state.value, f"{t.round}/{t.rounds}", _metric(t.metric) + best]
        )
    _table(rows)


@sweeps_app.command("cancel")
def cancel_sweep(sweep_id: SweepId, url: UrlOption = None, token: TokenOption = None) -> None:
    """Stop a sweep's trials after their current round; start no more."""
    with _service(url, token) as client:
        record = client.cancel_sweep(sweep_id)
    typer.echo(f"sweep {record.id}: cancel requested ({record.state.value})")


@sweeps_app.command("resume")
def resume_sweep(sweep_id: SweepId, url: UrlOption = None, token: TokenOption = None) -> None:
    """Continue a cancelled or failed sweep: its unfinished trials from their checkpoints."""
    with _service(url, token) as client:
        record = client.resume_sweep(sweep_id)
    typer.echo(f"sweep {record.id}: {record.state.value}")


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


def _show_adaptation(record: AdaptationPublic, queries: list[str]) -> None:
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
