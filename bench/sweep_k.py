"""Does a larger k (inner steps) help at equal tasks seen? A sweep through a real `reptile serve`.

The paper chose k per experiment without comparing. This runs one FIFO sweep (no early stop:
every trial trains its whole budget of rounds × meta_batch_size tasks, so the comparison is at
equal tasks seen) over k ∈ {1, 2, 5, 10} × 3 seeds on sine and/or a small one on Omniglot
(5-way 1-shot, k ∈ {1, 5} × 2 seeds), then prints one table row per k: each final held-out
metric's mean ± standard deviation over seeds, its ratio to the smallest k's mean and to the
previous k's, and a trial's mean wall time (what the larger k costs); and draws a figure.

    python -m bench.sweep_k [--quick] [--task sine|omniglot|all] [--omniglot-data PATH]
                            [--figure docs/figures/sweep_k.png]
"""

import argparse
import os
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow import MlflowClient  # noqa: E402

from api.client import ReptileClient  # noqa: E402
from api.schemas import SweepPublic  # noqa: E402
from bench.server import running_server  # noqa: E402

SEEDS = [0, 1, 2]
SINE_KS = [1, 2, 5, 10]
SINE_METRICS = ["eval_mse_after_1", "eval_mse_after_32"]  # both reported whatever k is


def sine_sweep(quick: bool) -> dict[str, Any]:
    # the default job's 3000 rounds × 10 tasks (30,000 tasks seen); quick: a tenth
    rounds = 300 if quick else 3000
    base = {"rounds": rounds, "eval_every": rounds, "num_workers": 1, "execution": "in_actor"}
    return {
        "base": base,
        "space": {"inner_steps": {"grid": SINE_KS}, "seed": {"grid": SEEDS}},
        "metric": "eval_mse_after_32",
        "mode": "min",
        "trials": len(SINE_KS) * len(SEEDS),
        "max_concurrent": 2,
        "scheduler": "fifo",
    }


def omniglot_sweep(data: str, quick: bool) -> dict[str, Any]:
    rounds = 40 if quick else 400
    base = {
        "task": "omniglot",
        "data": data,
        "ways": 5,
        "shots": 1,
        "eval_shots": [1],
        "inner_batch_size": 5,
        "rounds": rounds,
        "eval_every": rounds,
        "eval_tasks": 20,
        "num_workers": 1,
    }
    return {
        "base": base,
        "space": {"inner_steps": {"grid": [1, 5]}, "seed": {"grid": SEEDS[:2]}},
        "metric": "eval_acc_5w1s",
        "mode": "max",
        "trials": 4,
        "max_concurrent": 2,
        "scheduler": "fifo",
    }


def run_sweep(client: ReptileClient, body: dict[str, Any]) -> tuple[SweepPublic, float]:
    started = time.perf_counter()
    sweep_id = client.submit_sweep(body).id
    for _ in client.sweep_events(sweep_id):
        pass
    done = client.sweep(sweep_id)
    if done.state != "succeeded":
        raise SystemExit(f"sweep {sweep_id} {done.state.value}: {done.error}")
    return done, time.perf_counter() - started


@dataclass
class KTable:
    """Per k: each metric's final value per seed, and each trial's wall time."""

    metrics: dict[int, dict[str, list[float]]]
    seconds: dict[int, list[float]]
    tasks_seen: int


def by_k(sweep: SweepPublic, tracking_uri: str, metrics: list[str]) -> KTable:
    """Each k's final value of each metric, one per seed, read from the trials' MLflow runs."""
    client = MlflowClient(tracking_uri)
    table: dict[int, dict[str, list[float]]] = {}
    seconds: dict[int, list[float]] = {}
    for trial in sweep.trials:
        run = client.get_run(trial.run_id or "")
        k = int(trial.params["inner_steps"])
        row = table.setdefault(k, {m: [] for m in metrics})
        for metric in metrics:
            row[metric].append(run.data.metrics[metric])
        seconds.setdefault(k, []).append((run.info.end_time - run.info.start_time) / 1000)
    base = sweep.spec.base
    return KTable(
        dict(sorted(table.items())),
        dict(sorted(seconds.items())),
        base.rounds * base.meta_batch_size,
    )


def ratio_rows(table: KTable) -> list[list[str]]:
    """One row per k: each metric's mean ± sd, its mean over the smallest k's and over the
    previous k's, and the trial's mean seconds."""
    ks = list(table.metrics)
    rows = []
    for i, k in enumerate(ks):
        cells = [str(k)]
        for metric, values in table.metrics[k].items():
            mean = statistics.mean(values)
            first = statistics.mean(table.metrics[ks[0]][metric])
            previous = statistics.mean(table.metrics[ks[i - 1]][metric]) if i else mean
            cells += [
                f"{mean:.3f} ± {statistics.stdev(values):.3f}",
                f"{mean / first:.2f}",
                f"{mean / previous:.2f}" if i else "-",
            ]
        cells.append(f"{statistics.mean(table.seconds[k]):.0f}")
        rows.append(cells)
    return rows


def print_table(title: str, table: KTable, seconds: float) -> None:
    metrics = list(next(iter(table.metrics.values())))
    first = next(iter(table.metrics))
    print(f"\n{title}: {table.tasks_seen:,} tasks seen per trial, sweep {seconds:.0f} s")
    header = ["k"]
    for metric in metrics:
        header += [f"{metric} (mean ± sd)", f"/ k={first}", "/ previous k"]
    header.append("trial s")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in ratio_rows(table):
        print("| " + " | ".join(row) + " |")


def draw(tables: dict[str, KTable], path: Path) -> None:
    figure, axes = plt.subplots(1, len(tables), figsize=(5 * len(tables), 3.5), squeeze=False)
    for axis, (title, k_table) in zip(axes[0], tables.items(), strict=True):
        table = k_table.metrics
        ks = list(table)
        for metric in next(iter(table.values())):
            means = [statistics.mean(table[k][metric]) for k in ks]
            errors = [statistics.stdev(table[k][metric]) for k in ks]
            axis.errorbar(ks, means, yerr=errors, marker="o", capsize=3, label=metric)
        axis.set_xscale("log")
        axis.minorticks_off()  # only the swept k are labelled
        axis.set_xticks(ks, [str(k) for k in ks])
        axis.set_xlabel("inner steps k (equal tasks seen)")
        axis.set_title(title)
        axis.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a tenth of the rounds")
    parser.add_argument("--task", choices=["sine", "omniglot", "all"], default="sine")
    parser.add_argument(
        "--omniglot-data", default="/work/shared/data/omniglot", help="Omniglot zips or folders"
    )
    parser.add_argument("--figure", type=Path, default=Path("docs/figures/sweep_k.png"))
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="reptile-bench-sweep-"))
    tables: dict[str, KTable] = {}
    # two trials at once, each a driver and one worker: four logical CPUs for Ray and the
    # sweeps, whatever the machine has (on fewer cores the two trials share them)
    cpus = str(max(4, os.cpu_count() or 1))
    with (
        running_server(
            data_dir, env={"REPTILE_RAY_NUM_CPUS": cpus, "REPTILE_SWEEP_CPUS": "4"}
        ) as server,
        ReptileClient(server.url, timeout=120) as client,
    ):
        if args.task in ("sine", "all"):
            sweep, seconds = run_sweep(client, sine_sweep(args.quick))
            tables["sine"] = by_k(sweep, server.tracking_uri, SINE_METRICS)
            print_table(f"sine, sweep {sweep.id}", tables["sine"], seconds)
        if args.task in ("omniglot", "all"):
            data = str(Path(args.omniglot_data).resolve())
            sweep, seconds = run_sweep(client, omniglot_sweep(data, args.quick))
            tables["omniglot"] = by_k(sweep, server.tracking_uri, ["eval_acc_5w1s"])
            print_table(f"omniglot, sweep {sweep.id}", tables["omniglot"], seconds)
    draw(tables, args.figure)
    print(f"\nfigure: {args.figure}")


if __name__ == "__main__":
    main()
