"""`python -m bench.throughput`: the flags, the Ray and MLflow set-up, then the measurements
and their report (the package's docstring says what is measured)."""

import argparse
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from mlflow import MlflowClient

import bench.throughput
from bench.throughput.bars import bars, print_bars
from bench.throughput.measurement import matmul_gflops, run_workload
from bench.throughput.report import (
    BENCH_EXPERIMENT,
    bench_experiment,
    log_run,
    print_tables,
    scaling_png,
    summary,
)
from bench.throughput.workloads import BAR_ACTORS, HEADLINE, WORKLOADS
from service.files import atomic_write
from service.settings import Settings
from workers.cluster import connect, disconnect, total_resource
from workers.memory import keep_freed_memory

WORKER_NICENESS = "RAY_worker_niceness"  # Ray's spelling
RAY_DEFAULT_NICENESS = 15


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.throughput",
        description=bench.throughput.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and sizes: a few minutes"
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    parser.add_argument(
        "--workload",
        action="append",
        choices=list(WORKLOADS),
        help="measure only this workload (repeatable; default: all)",
    )
    parser.add_argument("--data-dir", type=Path, help="default: a new temporary folder")
    parser.add_argument("--tracking-uri", help="MLflow store (default: SQLite in the data dir)")
    parser.add_argument(
        "--actors",
        type=positive,
        nargs="+",
        default=[],
        metavar="N",
        help="more actor counts for the service path, beside 1 and 2 (on a cluster: RAY_ADDRESS)",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    actors = tuple(sorted({*BAR_ACTORS, *args.actors}))

    torch.set_num_threads(1)  # the in-process paths get one core, like an actor
    keep_freed_memory()  # and the same malloc settings
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="reptile-bench-"))
    settings = Settings(data_dir=data_dir, mlflow_tracking_uri=args.tracking_uri)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(settings.tracking_uri)
    local_store = args.tracking_uri is None
    experiment_id = bench_experiment(
        client, f"{settings.artifact_root}/bench" if local_store else None
    )
    # Ray starts its workers at niceness 15, in the service as here: when the actors fill every
    # core, the controller still gets one at once for its dispatch, gather and update. Measured
    # as deployed; RAY_worker_niceness=0 measures actors at the controller's priority.
    niceness = os.environ.get(WORKER_NICENESS, str(RAY_DEFAULT_NICENESS))
    cores = os.cpu_count() or 1
    roofline, machine_roofline = matmul_gflops(1), matmul_gflops(cores)
    workloads = {}
    for name, workload in WORKLOADS.items():
        if args.workload and name not in args.workload:
            continue
        data = getattr(workload.spec, "data", None)
        if data is not None and not Path(data).exists():
            print(f"{name} rows skipped: no data at {data}")
            continue
        workloads[name] = workload
    # Every pool's actors are up at once (1 CPU each), and the controller beside them: a local
    # Ray advertises that many CPUs, whatever the cores; a cluster must have them.
    connect(settings.ray_address, num_cpus=sum(actors) + 1)
    try:
        if (cpus := total_resource("CPU")) < sum(actors):
            raise SystemExit(
                f"the actors {actors} need {sum(actors)} CPUs at once; Ray has {cpus:g}"
            )
        results = [
            run_workload(name, w.spec, settings, w.quick if args.quick else w.full, actors)
            for name, w in workloads.items()
        ]
    finally:
        disconnect()

    machine = {
        "cores": str(cores),
        "torch": torch.__version__,
        "ray": settings.ray_address or "local",
        "ray_worker_niceness": niceness,
        "effort": "quick" if args.quick else "full",
        "roofline_gflops": f"{roofline:.1f}",  # float32 matmul, one thread (what an actor has)
        f"roofline_gflops_{cores}_threads": f"{machine_roofline:.1f}",
    }
    print(", ".join(f"{key} {value}" for key, value in machine.items()))
    pngs = []
    for result in results:
        print_tables(result, roofline)
        png = settings.data_dir / f"throughput-{result.name}.png"
        atomic_write(png, scaling_png(result))
        pngs.append(png)
    found = bars({result.name: result for result in results}, roofline)
    print_bars(found)
    run_id = log_run(client, experiment_id, machine, results, pngs)
    print(f"\nfigures: {', '.join(str(p) for p in pngs)}")
    print(f"MLflow: {settings.tracking_uri}, experiment {BENCH_EXPERIMENT!r}, run {run_id}")
    if args.json:
        summaries = {result.name: summary(result) for result in results}
        line: dict[str, object] = {"roofline_gflops": roofline}
        for name, numbers in summaries.items():
            prefix = "" if name == HEADLINE else f"{name}_"
            line |= {prefix + k: v for k, v in numbers.items() if k != "scaling"}
        line["bars"] = [asdict(bar) for bar in found]
        print(json.dumps(line | {"workloads": summaries, "mlflow_run_id": run_id}))


if __name__ == "__main__":
    main()
