"""What a throughput run reports: the side-by-side and scaling tables, the scaling figure (PNG),
the --json summary, and one run of the MLflow experiment "reptile-bench"."""

import io
import os
import time
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from bench.throughput.bars import OVERHEAD_BAR, overhead_below_bar_from
from bench.throughput.measurement import Measurement, WorkloadResult
from bench.throughput.workloads import actors_label

BENCH_EXPERIMENT = "reptile-bench"
MIB = 2**20


def print_tables(result: WorkloadResult, roofline: float) -> None:
    """The side-by-side table (`roofline`: one thread's matmul GFLOP/s), then the scaling."""
    spec, serial = result.spec, result.serial
    tasks = serial.rounds * serial.meta_batch_size
    print(
        f"\n{result.name}: meta-batch {spec.meta_batch_size}, {spec.inner_steps} inner "
        f"{spec.inner_optimizer} steps of {spec.inner_batch_size}, {tasks} tasks timed per path, "
        f"same seeds; FLOPs per task: {result.flops['serial'] / 1e6:,.1f} M inner loop "
        f"(forward + backward), {result.flops['vectorised'] / 1e6:,.1f} M with the scoring of φ "
        "and W_i; roof: one thread's matmul rate per core used"
    )
    header: tuple[str, ...] = ("path", "actors", "threads", "mode", "tasks/s", "×serial")
    header += ("ms/round", "compute", "overhead", "logging", "GFLOP/s", "% roof")
    print(f"{header[0]:<12}{header[1]:>7}{header[2]:>8}{header[3]:>11}", end="")
    print("".join(f"{h:>10}" for h in header[4:]) + f"{'peak RSS/actor':>18}")
    for m in result.side_by_side():
        rss = " ".join(f"{b / MIB:.0f}" for b in m.peak_rss_bytes) + " MiB" if m.actors else "-"
        gflops = result.gflops(m)
        cores_used = max(1, m.actors) * m.threads
        print(
            f"{m.path:<12}{m.actors or '-':>7}{m.threads:>8}{m.mode:>11}{m.tasks_per_s:>10.1f}"
            f"{m.tasks_per_s / serial.tasks_per_s:>10.2f}{m.per_round_ms(m.seconds):>10.2f}"
            f"{m.per_round_ms(m.compute):>10.2f}{m.per_round_ms(m.overhead):>10.2f}"
            f"{m.per_round_ms(m.logging):>10.2f}{gflops:>10.1f}"
            f"{100 * gflops / (roofline * cores_used):>10.1f}{rss:>18}"
        )
    print(
        f"\n{result.name}: tasks/s (× serial) and the service's overhead (% of wall time) "
        "against the meta-batch size"
    )
    print(f"{'meta-batch':>10}{'vectorised':>18}", end="")
    print("".join(f"{f'service, {actors_label(n)}':>20}{'overhead':>10}" for n in result.actors))

    def rate(m: Measurement) -> str:
        return f"{m.tasks_per_s:.0f} ({m.tasks_per_s / serial.tasks_per_s:.1f}×)"

    def rows(sizes: list[int], compiled: bool) -> None:
        for size in sizes:
            line = f"{size:>10}{rate(result.at('vectorised', 0, size, compiled)):>18}"
            for n in result.actors:
                service = result.at("service", n, size, compiled)
                line += f"{rate(service):>20}{100 * service.overhead_fraction:>9.1f}%"
            print(line)

    rows(result.meta_batch_sizes, compiled=False)
    largest = result.meta_batch_sizes[-1]
    for n in result.actors:
        below = overhead_below_bar_from(result, n)
        where = f"from meta-batch {below} on" if below else f"at no meta-batch size up to {largest}"
        print(f"overhead below {OVERHEAD_BAR:.0%} with {actors_label(n)}: {where}")
    if result.compiled:
        print("the same with compile_inner_loop (each actor compiled its step before the timing)")
        rows(sorted({m.meta_batch_size for m in result.compiled}), compiled=True)


def scaling_png(result: WorkloadResult) -> bytes:
    """Tasks/s and the service's overhead against the meta-batch size, one line per path."""
    figure = Figure(figsize=(11, 4))  # not pyplot: no global state, no display backend
    rate, overhead = figure.subplots(1, 2)
    lines = [("vectorised", 0, "vectorised (1 process)")]
    lines += [("service", n, f"service, {actors_label(n)}") for n in result.actors]
    sizes = result.meta_batch_sizes
    for index, (path, actors, label) in enumerate(lines):
        points = [result.at(path, actors, size) for size in sizes]
        style = {"marker": "o", "label": label, "color": f"C{index}"}  # one colour per path
        rate.plot(sizes, [m.tasks_per_s for m in points], **style)
        if path == "service":
            overhead.plot(sizes, [100 * m.overhead_fraction for m in points], **style)
    serial = f"serial (meta-batch {result.serial.meta_batch_size})"
    rate.axhline(result.serial.tasks_per_s, color="k", linestyle="--", label=serial)
    overhead.axhline(100 * OVERHEAD_BAR, color="k", linestyle="--", label=f"{OVERHEAD_BAR:.0%}")
    rate.set(xscale="log", yscale="log", xlabel="meta-batch size", ylabel="tasks/s")
    overhead.set(xscale="log", xlabel="meta-batch size", ylabel="overhead, % of wall time")
    for axes in (rate, overhead):
        axes.set_xticks(sizes, [str(size) for size in sizes])
        axes.legend(fontsize=8)
    figure.suptitle(f"{result.name}: throughput ({os.cpu_count()} cores)")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return buffer.getvalue()


def summary(result: WorkloadResult) -> dict[str, object]:
    """The numbers the issue tracks, plus the whole scaling curve."""
    serial, vectorised = result.serial, result.at("vectorised", 0, result.spec.meta_batch_size)
    size = result.spec.meta_batch_size
    by_actors = {n: result.at("service", n, size) for n in result.actors}
    return {
        "serial_tasks_per_s": serial.tasks_per_s,
        "vectorised_tasks_per_s": vectorised.tasks_per_s,
        **{f"vectorised_{m.mode}_tasks_per_s": m.tasks_per_s for m in result.other_modes},
        "service_tasks_per_s": by_actors[2].tasks_per_s,
        "ray_overhead_fraction": by_actors[2].overhead_fraction,
        "service_1_actor_tasks_per_s": by_actors[1].tasks_per_s,
        **{f"{m.path}_all_cores_tasks_per_s": m.tasks_per_s for m in result.all_cores},
        "compiled": {
            f"{m.path}_{m.actors}_mb{m.meta_batch_size}_tasks_per_s": m.tasks_per_s
            for m in result.compiled
        },
        "gflops": result.gflops(vectorised),  # in this process, on one thread
        "flops_per_task": result.flops,
        "overhead_below_10pct_from": {n: overhead_below_bar_from(result, n) for n in result.actors},
        "scaling": [
            asdict(m) | {"tasks_per_s": m.tasks_per_s, "overhead_fraction": m.overhead_fraction}
            for m in result.scaling
        ],
    }


def bench_experiment(client: MlflowClient, artifact_location: str | None) -> str:
    """The id of the "reptile-bench" experiment (created on first use; this also creates the
    tables of a fresh store, before anything is timed)."""
    experiment = client.get_experiment_by_name(BENCH_EXPERIMENT)
    if experiment is not None:
        return str(experiment.experiment_id)
    return client.create_experiment(BENCH_EXPERIMENT, artifact_location=artifact_location)


def log_run(
    client: MlflowClient,
    experiment_id: str,
    settings: dict[str, str],
    results: list[WorkloadResult],
    pngs: list[Path],
) -> str:
    """One run: the settings and specs as params, each path's tasks/s and overhead per
    meta-batch size as metrics (step = meta-batch size), the figures as artifacts. Returns the
    run id."""
    run_id = client.create_run(experiment_id, run_name="throughput").info.run_id
    now = int(time.time() * 1000)
    params = [Param(key, value) for key, value in settings.items()]
    metrics = []
    for result in results:
        params.append(Param(f"{result.name}_spec", result.spec.model_dump_json()))
        serial = result.serial.tasks_per_s
        metrics.append(Metric(f"{result.name}_serial_tasks_per_s", serial, now, 0))
        for m in result.scaling:
            key = f"{result.name}_{m.path}" + (f"_{m.actors}x" if m.actors else "")
            metrics.append(Metric(f"{key}_tasks_per_s", m.tasks_per_s, now, m.meta_batch_size))
            if m.actors:
                metrics.append(
                    Metric(f"{key}_overhead_fraction", m.overhead_fraction, now, m.meta_batch_size)
                )
    client.log_batch(run_id, metrics=metrics, params=params)
    for png in pngs:
        client.log_artifact(run_id, str(png), "plots")
    client.set_terminated(run_id)
    return str(run_id)
