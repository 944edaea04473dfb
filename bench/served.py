"""`python -m bench.served`: the jobs users run, timed where they run them.

`reptile serve` starts as `make serve` starts it (local Ray on the machine's CPUs, SQLite MLflow,
the MLflow UI beside the API); the README's sine job and the default Omniglot job go in through
HTTP; their rounds are read back from the runs' own MLflow metrics. Side by side, in the same
run: the serial loop and the in-process vectorised loop on the same sine job, the sine job again
with its rounds split over the actors (`execution: split`: the controller gathers every
round), and for Omniglot the throughput bench's 2-actor harness on the same job
(`MetaTrainer` + Ray `WorkerPool` + tracker, in this process).

Bars: the served sine job ≥ 3× the serial loop's tasks/s; the served Omniglot job's mean round
within 10 % of the harness's.
"""

import argparse
import json
import os
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from mlflow import MlflowClient

from bench.server import run_job, running_server
from bench.throughput.inprocess import InProcessRunner
from bench.throughput.measurement import (
    Measurement,
    measure_serial,
    measure_service,
    measure_vectorised,
    torch_threads,
)
from bench.throughput.workloads import SHARED_OMNIGLOT
from reptile.tasks import make_family
from service.runtime import make_pool, prepare_dataset
from service.settings import Settings
from service.specs import OmniglotJobSpec, SineJobSpec
from tests.utils.server import Server
from workers.cluster import connect, disconnect

SINE_JOB = {"rounds": 3000, "meta_batch_size": 10, "num_workers": 2}  # the README's first job
SINE_BAR = 3.0  # the served sine job against the serial loop, in tasks/s
OMNIGLOT_BAR = 1.10  # the served Omniglot job's mean round against the harness's


@dataclass(frozen=True)
class Served:
    """One job through the server, from its answer and its MLflow run."""

    name: str
    execution: str  # the run's `execution` tag: the plan and why
    rounds: int
    tasks: int
    wall_s: float  # submit → succeeded (actors' start, evaluations, registration included)
    rounds_s: float  # first round's metrics → last round's, as logged
    round_ms: float  # median `round_seconds`
    mean_round_ms: float
    compute_ms: float  # median `compute_seconds`

    @property
    def tasks_per_s(self) -> float:
        """Training throughput: the rounds' tasks over the time between the first and last."""
        return self.tasks * (self.rounds - 1) / self.rounds / self.rounds_s

    @property
    def end_to_end_tasks_per_s(self) -> float:
        return self.tasks / self.wall_s


def serve_job(server: Server, name: str, body: dict[str, Any]) -> Served:
    with server.client() as client:
        record, wall = run_job(client, body)
    mlflow = MlflowClient(server.tracking_uri)
    run_id = record["mlflow"]["run_id"]
    history = {
        key: mlflow.get_metric_history(run_id, key)
        for key in ("epsilon", "round_seconds", "compute_seconds")
    }
    stamps = sorted(m.timestamp for m in history["epsilon"])
    round_s = [m.value for m in history["round_seconds"]]
    spec = record["spec"]
    return Served(
        name=name,
        execution=mlflow.get_run(run_id).data.tags.get("execution", "-"),
        rounds=spec["rounds"],
        tasks=spec["rounds"] * spec["meta_batch_size"],
        wall_s=wall,
        rounds_s=(stamps[-1] - stamps[0]) / 1000,
        round_ms=1000 * statistics.median(round_s),
        mean_round_ms=1000 * statistics.fmean(round_s),
        compute_ms=1000 * statistics.median(m.value for m in history["compute_seconds"]),
    )


def in_process(spec: SineJobSpec, folder: Path) -> list[Measurement]:
    """The serial loop (on one thread and on every core: the faster is the reference) and the
    vectorised loop on one thread (what an actor runs), on `spec`'s tasks."""
    family = make_family("sine", **spec.task_options())
    rows = []
    for threads in sorted({1, torch.get_num_threads()}):
        with torch_threads(threads):
            rows.append(measure_serial(family, spec))
    with torch_threads(1):
        runner = InProcessRunner("sine", spec.task_options())
        rows.append(measure_vectorised(runner, spec, folder, None))
    return rows


def harness(spec: OmniglotJobSpec, data_dir: Path) -> Measurement:
    """The throughput bench's service path on `spec` (2 actors), on a Ray of this process."""
    settings = Settings(data_dir=data_dir)
    dataset = prepare_dataset(settings, spec)
    connect(None, num_cpus=spec.num_workers + 1)
    try:
        pool = make_pool(settings, spec, dataset)
        try:
            return measure_service(settings, pool, spec, dataset, "loop")
        finally:
            pool.shutdown()
    finally:
        disconnect()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.served", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a short Omniglot job (100 rounds)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument("--omniglot", type=Path, default=SHARED_OMNIGLOT, help="data set")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="reptile-served-"))
    sine = SineJobSpec.model_validate(SINE_JOB)
    timed_sine = sine.model_copy(update={"rounds": 500, "execution": "split"})
    local = in_process(timed_sine, data_dir)
    serial = max((m for m in local if m.path == "serial"), key=lambda m: m.tasks_per_s)
    omniglot_body: dict[str, Any] = {"task": "omniglot", "data": str(args.omniglot)}
    if args.quick:
        omniglot_body["rounds"] = 100
    omniglot = args.omniglot.exists()
    reference = None
    if omniglot:
        spec = OmniglotJobSpec.model_validate(omniglot_body)
        timed = spec.model_copy(
            update={"rounds": min(spec.rounds, 100), "execution": "split", "name": "harness"}
        )
        reference = harness(timed, data_dir)
    served = []
    with running_server(data_dir / "server", ui=True) as server:
        served.append(serve_job(server, "served, default (auto)", SINE_JOB))
        served.append(serve_job(server, "served, split", SINE_JOB | {"execution": "split"}))
        if omniglot:
            served.append(serve_job(server, "served omniglot, default", omniglot_body))

    cores = os.cpu_count()
    print(f"{cores} cores, torch {torch.__version__}; `reptile serve` with the MLflow UI")
    print(f"sine: {json.dumps(SINE_JOB)}")
    print(
        f"{'path':<30}{'rounds':>7}{'tasks/s':>10}{'× serial':>10}{'round ms':>10}"
        f"{'compute ms':>12}{'e2e tasks/s':>13}  execution"
    )
    for m in local:
        name = f"{m.path} ({m.threads} thread{'s' * (m.threads > 1)})"
        per_round, ratio = m.per_round_ms(m.seconds), m.tasks_per_s / serial.tasks_per_s
        print(
            f"{name:<30}{m.rounds:>7}{m.tasks_per_s:>10.0f}{ratio:>10.2f}"
            f"{per_round:>10.2f}{m.per_round_ms(m.compute):>12.2f}{'':>13}  -"
        )
    for s in served:
        if s.name.startswith("served omniglot"):
            continue
        print(
            f"{s.name:<30}{s.rounds:>7}{s.tasks_per_s:>10.0f}"
            f"{s.tasks_per_s / serial.tasks_per_s:>10.2f}{s.round_ms:>10.2f}"
            f"{s.compute_ms:>12.2f}{s.end_to_end_tasks_per_s:>13.0f}  {s.execution}"
        )
    summary: dict[str, Any] = {
        "serial_tasks_per_s": serial.tasks_per_s,
        "served": [asdict(s) | {"tasks_per_s": s.tasks_per_s} for s in served],
        "sine_ratio": served[0].tasks_per_s / serial.tasks_per_s,
    }
    print(
        f"bar: served default sine job / serial loop = {summary['sine_ratio']:.2f}× "
        f"(≥ {SINE_BAR:g}×: {'met' if summary['sine_ratio'] >= SINE_BAR else 'NOT met'})"
    )
    if reference is not None:
        job = served[-1]
        harness_ms = reference.per_round_ms(reference.compute + reference.overhead)
        ratio = job.mean_round_ms / harness_ms
        summary |= {"omniglot_harness_round_ms": harness_ms, "omniglot_ratio": ratio}
        print(f"\nomniglot: {json.dumps(omniglot_body)}")
        print(f"harness (2 actors, {reference.rounds} rounds): mean round {harness_ms:.1f} ms")
        print(
            f"served ({job.rounds} rounds, {job.execution}): mean round "
            f"{job.mean_round_ms:.1f} ms, median {job.round_ms:.1f} ms, wall {job.wall_s:.0f} s"
        )
        print(
            f"bar: served / harness = {ratio:.3f} (≤ {OMNIGLOT_BAR:g}: "
            f"{'met' if ratio <= OMNIGLOT_BAR else 'NOT met'})"
        )
    else:
        print(f"\nomniglot rows skipped: no data at {args.omniglot}")
    if args.json:
        print(json.dumps(summary))


if __name__ == "__main__":
    main()
