"""Throughput: the serial loop, the vectorised inner loop and the Ray service, side by side.

For each workload (sine: meta-batch 32, 5 inner SGD steps of 10 points; Omniglot 5-way 5-shot:
meta-batch 32, 5 inner Adam steps of 10 images, the Omniglot job defaults, on the shared zips
when they are there), in one run on the same machine, with the same seeds and the same number of
tasks:

1. serial: `reptile.serial.train_serial`, one task at a time (nn.Module + torch.optim);
2. vectorised: `reptile.inner.run_tasks` on all tasks of a round at once, in this process, as
   the actors run it, in the family's batching mode (`stacked`: a model that takes weights
   stacked over tasks, and the family's written-out gradient; `vmap`: `torch.func.vmap` over
   the tasks, and autograd; `loop`: task by task), and again in each other mode the family's
   model supports, for comparison;
3. service: `service.trainer.MetaTrainer` driving a `workers.pool.WorkerPool` on a local Ray (or
   the cluster at RAY_ADDRESS) and logging to MLflow through `service.tracking.Tracker` (wired
   by `service.runtime`), with 1 and 2 actors, and the counts `--actors` adds;
4. 2 and 3 again with `compile_inner_loop` (mode "+c"), after each compiled its step once
   (sine: meta-batch 32 and 128; Omniglot: 32). Compiling takes 5–60 s per process, so a
   --quick run takes a few minutes the first time and less once torch's cache holds the code.

It prints tasks/s; milliseconds per round split into compute (the inner loops; for the service,
the slowest chunk), overhead (the rest of the round: Ray dispatch and gather, the meta-update)
and logging (between rounds: metrics to the tracker, bookkeeping); peak RSS per actor; each
path's ratio to serial; and its GFLOP/s against the roofline: the FLOPs of one task on that
path (matmuls and convolutions, forward and backward, counted by `FlopCounterMode`) times
tasks/s, over float32 `torch.mm` GFLOP/s on one thread per core used. Then tasks/s and the
overhead against the meta-batch size (sine: 1, 2, 4 … 256; --quick: a subset) and the number of
actors, drawn to a PNG and logged as a run of the MLflow experiment "reptile-bench"; last, the
issue's bars, each with this run's value and whether it met it (`bars` in the --json line).
In-process paths use one thread, like an actor; serial and vectorised run once more on all of
the machine's cores ("threads" column), since "one process" may use the whole machine.

    python bench/throughput.py [--quick] [--json] [--workload NAME] [--data-dir DIR]
                               [--tracking-uri URI] [--actors N [N ...]]
"""

import argparse
import io
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import get_args

import matplotlib

matplotlib.use("Agg")  # no display; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from mlflow import MlflowClient  # noqa: E402
from mlflow.entities import Metric, Param  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from reptile.inner import batched_step, run_tasks  # noqa: E402
from reptile.meta import MetaOptimizer, epsilon  # noqa: E402
from reptile.params import init_params, scale  # noqa: E402
from reptile.serial import train_serial  # noqa: E402
from reptile.tasks import TaskFamily, make_family, task_seeds  # noqa: E402
from reptile.tasks.base import Batching  # noqa: E402
from service.runtime import make_pool, make_tracker, prepare_dataset  # noqa: E402
from service.settings import Settings  # noqa: E402
from service.specs import AnyJobSpec, OmniglotJobSpec, SineJobSpec  # noqa: E402
from service.trainer import MetaTrainer, Progress  # noqa: E402
from workers.cluster import connect, disconnect, total_resource  # noqa: E402
from workers.memory import keep_freed_memory  # noqa: E402
from workers.pool import WorkerPool  # noqa: E402

SHARED_OMNIGLOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
HEADLINE = "sine"  # the workload whose numbers head the --json line
BAR_ACTORS = (1, 2)  # always measured: the bars and the --json line read them
OVERHEAD_BAR = 0.10
BENCH_EXPERIMENT = "reptile-bench"
WORKER_NICENESS = "RAY_worker_niceness"  # Ray's spelling
RAY_DEFAULT_NICENESS = 15
MIB = 2**20


@dataclass(frozen=True)
class Effort:
    """The meta-batch sizes measured, each for about `tasks` tasks (within the round limits)."""

    meta_batch_sizes: tuple[int, ...]
    tasks: int
    min_rounds: int
    max_rounds: int
    compiled_sizes: tuple[int, ...] = ()  # also measured with `compile_inner_loop`

    def rounds(self, meta_batch_size: int) -> int:
        return min(self.max_rounds, max(self.min_rounds, self.tasks // meta_batch_size))


@dataclass(frozen=True)
class Workload:
    """A job spec at the meta-batch size of the side-by-side table, and how long to measure it.

    Held-out evaluation (at the first and last round only) is kept small: it is not measured.
    """

    spec: AnyJobSpec
    quick: Effort
    full: Effort


WORKLOADS = {
    "sine": Workload(
        SineJobSpec(
            name="bench-sine", meta_batch_size=32, inner_steps=5, eval_every=0, eval_tasks=1
        ),
        quick=Effort(  # ≥ 8 rounds a size: a timing window of ~0.1 s caught one slow moment
            (1, 4, 16, 32, 64, 128, 256),
            tasks=2048,
            min_rounds=8,
            max_rounds=64,
            compiled_sizes=(32, 128),
        ),
        full=Effort(
            tuple(2**i for i in range(9)),
            tasks=8192,
            min_rounds=10,
            max_rounds=400,
            compiled_sizes=(32, 128),
        ),
    ),
    # A round of 32 Conv4 tasks takes seconds on one core: one meta-batch size, few rounds.
    "omniglot": Workload(
        OmniglotJobSpec(
            task="omniglot",
            name="bench-omniglot",
            data=str(SHARED_OMNIGLOT),
            shots=5,
            meta_batch_size=32,
            eval_every=0,
            eval_tasks=1,
            eval_shots=[5],
        ),
        quick=Effort((32,), tasks=32, min_rounds=1, max_rounds=1, compiled_sizes=(32,)),
        full=Effort((32,), tasks=320, min_rounds=10, max_rounds=10, compiled_sizes=(32,)),
    ),
}


@dataclass(frozen=True)
class Measurement:
    """One path at one meta-batch size, totalled over the measured rounds."""

    path: str  # "serial", "vectorised" or "service"
    actors: int  # 0: in this process
    meta_batch_size: int
    rounds: int
    seconds: float  # wall time
    compute: float  # inner loops (service: the slowest chunk of each round)
    overhead: float  # the rest of the rounds: Ray dispatch and gather, the meta-update
    logging: float  # between rounds: metrics to the tracker, bookkeeping
    peak_rss_bytes: list[int] = field(default_factory=list)  # per actor, so far
    mode: str = "-"  # how `run_tasks` batched a chunk's tasks, `Batching` (serial: "-")
    threads: int = 1  # torch's threads per process (in this process, or each actor's)

    @property
    def tasks_per_s(self) -> float:
        return self.rounds * self.meta_batch_size / self.seconds

    @property
    def overhead_fraction(self) -> float:
        return self.overhead / self.seconds

    def per_round_ms(self, seconds: float) -> float:
        return 1000 * seconds / self.rounds


@dataclass(frozen=True)
class WorkloadResult:
    name: str
    spec: AnyJobSpec
    serial: Measurement
    other_modes: list[Measurement]  # vectorised in the modes the family does not use
    scaling: list[Measurement]  # vectorised and service, every meta-batch size and actor count
    compiled: list[Measurement]  # the same with `compile_inner_loop`, at `compiled_sizes`
    all_cores: list[Measurement]  # serial and vectorised on every core (none on one core)
    flops: dict[str, float]  # per task: "serial" (the inner loop), "vectorised" (+ scoring)
    actors: tuple[int, ...]  # the service path's actor counts, ascending

    def gflops(self, m: Measurement) -> float:
        """The path's arithmetic rate: its FLOPs per task times tasks/s (service: as vectorised)."""
        return self.flops["serial" if m.path == "serial" else "vectorised"] * m.tasks_per_s / 1e9

    def at(
        self, path: str, actors: int, meta_batch_size: int, compiled: bool = False
    ) -> Measurement:
        return next(
            m
            for m in (self.compiled if compiled else self.scaling)
            if (m.path, m.actors, m.meta_batch_size) == (path, actors, meta_batch_size)
        )

    @property
    def meta_batch_sizes(self) -> list[int]:
        return sorted({m.meta_batch_size for m in self.scaling})

    def side_by_side(self) -> list[Measurement]:
        """The table's rows: every path at the spec's meta-batch size."""
        size = self.spec.meta_batch_size
        rows = [self.serial, self.at("vectorised", 0, size), *self.other_modes]
        rows += [self.at("service", n, size) for n in self.actors]
        return rows + [m for m in self.compiled if m.meta_batch_size == size] + self.all_cores

    def best_serial(self) -> Measurement:
        """The serial loop at its faster thread count: what a ratio on all cores compares to."""
        candidates = [self.serial] + [m for m in self.all_cores if m.path == "serial"]
        return max(candidates, key=lambda m: m.tasks_per_s)

    def overhead_below_bar_from(self, actors: int) -> int | None:
        """The smallest meta-batch size from which the service's overhead stays under the bar."""
        below = None
        for size in reversed(self.meta_batch_sizes):
            if self.at("service", actors, size).overhead_fraction >= OVERHEAD_BAR:
                break
            below = size
        return below


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads in this process set to `count` for the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def positive(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def actors_label(count: int) -> str:
    return f"{count} actor" + ("s" if count > 1 else "")


def sized(spec: AnyJobSpec, meta_batch_size: int, rounds: int, **changes: object) -> AnyJobSpec:
    """`spec` at another meta-batch size and length (validated like any job)."""
    return type(spec).model_validate(
        spec.model_dump()
        | {"meta_batch_size": meta_batch_size, "rounds": rounds, "checkpoint_every": rounds}
        | changes
    )


def measure_serial(family: TaskFamily, spec: AnyJobSpec) -> Measurement:
    """The paper's loop as `reptile.serial` writes it; all of its time counts as compute.

    One untimed task first, as for the other paths: torch's first autograd and optimiser calls
    cost about a second, which would otherwise be charged to the serial loop alone.
    """
    train_serial(family, sized(spec, 1, 1).meta_config(), spec.seed)
    started = time.perf_counter()
    train_serial(family, spec.meta_config(), spec.seed)
    seconds = time.perf_counter() - started
    return Measurement(
        "serial",
        0,
        spec.meta_batch_size,
        spec.rounds,
        seconds,
        seconds,
        0.0,
        0.0,
        threads=torch.get_num_threads(),
    )


def other_families(spec: AnyJobSpec, dataset: str | None, used: Batching) -> list[TaskFamily]:
    """The family of `spec` in every other batching mode its model supports."""
    families = []
    for batching in get_args(Batching):
        if batching != used:
            try:
                families.append(
                    make_family(spec.task, **spec.task_options(dataset), batching=batching)
                )
            except ValueError:  # e.g. Conv4 cannot take stacked weights
                continue
    return families


def matmul_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    """The roofline: float32 `torch.mm` GFLOP/s on `threads` threads (best of `repeats`)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best = float("inf")
    with torch_threads(threads):
        torch.mm(a, b)
        for _ in range(repeats):
            started = time.perf_counter()
            torch.mm(a, b)
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def flops_per_task(family: TaskFamily, spec: AnyJobSpec) -> dict[str, float]:
    """FLOPs of one task on the serial path (its inner loop) and in `run_tasks` (the inner loop,
    then the loss of W_i on its first mini-batch), counted by running each once."""
    with FlopCounterMode(display=False) as serial:
        train_serial(family, sized(spec, 1, 1).meta_config(), spec.seed)
    model = family.make_model()
    phi = init_params(model, spec.seed)
    with FlopCounterMode(display=False) as vectorised:
        run_tasks(family, model, phi, task_seeds(spec.seed, 0, 1), spec.inner_config())
    return {"serial": serial.get_total_flops(), "vectorised": vectorised.get_total_flops()}


def label(family: TaskFamily, spec: AnyJobSpec) -> str:
    """How a chunk runs: the family's batching, "+c" when the inner step is compiled."""
    return family.batching + ("+c" if spec.compile_inner_loop else "")


def measure_vectorised(family: TaskFamily, spec: AnyJobSpec) -> Measurement:
    """The same rounds with every round's tasks adapted at once by `run_tasks`, in-process."""
    model = family.make_model()
    config = spec.meta_config()
    meta = MetaOptimizer(init_params(model, spec.seed), config.outer_optimizer)
    # as an actor keeps it
    step = batched_step(family, model, config.inner, compile=spec.compile_inner_loop)
    # First-call costs (and compiling) only: two tasks (a whole Omniglot round would take
    # seconds; a one-task chunk would compile a graph of its own)
    run_tasks(family, model, meta.phi, task_seeds(spec.seed, 0, 2), config.inner, step=step)
    compute = 0.0
    started = time.perf_counter()
    for round_index in range(config.rounds):
        seeds = task_seeds(spec.seed, round_index, spec.meta_batch_size)
        inner_started = time.perf_counter()
        result = run_tasks(family, model, meta.phi, seeds, config.inner, step=step)
        compute += time.perf_counter() - inner_started
        meta.step(scale(result.delta_sum, 1 / result.count), epsilon(round_index, config))
    seconds = time.perf_counter() - started
    return Measurement(
        "vectorised",
        0,
        spec.meta_batch_size,
        spec.rounds,
        seconds,
        compute,
        seconds - compute,
        0.0,
        mode=label(family, spec),
        threads=torch.get_num_threads(),
    )


def measure_service(
    settings: Settings, pool: WorkerPool, spec: AnyJobSpec, dataset: str | None, chunk_mode: str
) -> Measurement:
    """A whole job through `MetaTrainer`, timed between its progress reports.

    The window runs from the report of round 0 (after the initial evaluation, and after the
    tracker drew its figures) to the one before the last round (which evaluates and
    checkpoints), so it holds `rounds − 1` plain rounds.
    """
    folder = settings.data_dir / "runs" / f"{spec.name}-{time.time_ns()}"
    stamps: list[tuple[float, Progress]] = []
    tracker = make_tracker(
        settings,
        spec,
        run_name=spec.name or spec.task,
        tags={"source": "bench/throughput.py"},
        staging_dir=folder / "mlflow-staging",
    )

    def stamp(progress: Progress) -> None:
        if progress.round == 0:  # the tracker draws round 0's figures first, not in the window
            tracker.flush(timeout=120)
        stamps.append((time.perf_counter(), progress))

    trainer = MetaTrainer(
        spec, pool, tracker, folder / "checkpoint.safetensors", on_progress=stamp, dataset=dataset
    )
    trainer.run()
    tracker.finish("FINISHED")
    window = stamps[:-1]
    rounds = [progress.metrics for _, progress in window[1:]]
    seconds = window[-1][0] - window[0][0]
    round_seconds = sum(metrics["round_seconds"] for metrics in rounds)
    compute = sum(metrics["compute_seconds"] for metrics in rounds)
    return Measurement(
        "service",
        spec.num_workers,
        spec.meta_batch_size,
        len(rounds),
        seconds,
        compute,
        round_seconds - compute,
        seconds - round_seconds,
        pool.peak_rss_bytes(),
        chunk_mode,
    )


def run_workload(
    name: str, spec: AnyJobSpec, settings: Settings, effort: Effort, actors: tuple[int, ...]
) -> WorkloadResult:
    """Serial and the other modes at the spec's meta-batch size; vectorised and service at every
    size; first, before the actors start, serial and vectorised on all cores.

    The paths of one meta-batch size run back to back, the table's size first, so that a
    neighbour's load on a shared machine weighs on the paths compared alike.
    """
    dataset = prepare_dataset(settings, spec)
    family = make_family(spec.task, **spec.task_options(dataset))
    size = spec.meta_batch_size
    table = sized(spec, size, effort.rounds(size))  # the side-by-side table's rounds
    # Before any actor starts: beside idle actors OpenMP's second thread gained less here (sine,
    # meta-batch 32: 3.0-3.1 ms a round against 2.8 ms without Ray, and 3.4-3.8 on one thread).
    all_cores = []
    if (cores := os.cpu_count() or 1) > 1:
        with torch_threads(cores):
            all_cores = [measure_serial(family, table), measure_vectorised(family, table)]
    pools = {n: make_pool(settings, sized(spec, 1, 1, num_workers=n), dataset) for n in actors}
    try:
        phi = init_params(family.make_model(), spec.seed)
        for n, pool in pools.items():  # a task per actor, untimed, starts and warms them up
            pool.run_round(phi, task_seeds(spec.seed, 0, n), spec.inner_config())

        def measure(size: int, compiled: bool = False) -> list[Measurement]:
            rounds = effort.rounds(size)
            timed = sized(spec, size, rounds, compile_inner_loop=compiled)
            vectorised = measure_vectorised(family, timed)
            if compiled:  # each actor compiles its step before the timing, as in a long job
                for n, pool in pools.items():
                    pool.run_round(
                        phi, task_seeds(spec.seed, 0, 2 * n), timed.inner_config(), compile=True
                    )
            services = [
                measure_service(  # + the last round (evaluation and checkpoint), not timed
                    settings,
                    pools[n],
                    sized(
                        timed,
                        size,
                        rounds + 1,
                        num_workers=n,
                        name=f"{spec.name}-{n}x-mb{size}" + ("-compiled" if compiled else ""),
                    ),
                    dataset,
                    label(family, timed),
                )
                for n in actors
            ]
            return [vectorised, *services]

        serial = measure_serial(family, table)
        scaling = measure(size)
        other_modes = [
            measure_vectorised(other, table)
            for other in other_families(spec, dataset, family.batching)
        ]
        for extra in effort.meta_batch_sizes:
            if extra != size:
                scaling += measure(extra)
        compiled = [m for extra in effort.compiled_sizes for m in measure(extra, compiled=True)]
    finally:
        for pool in pools.values():
            pool.shutdown()
    flops = flops_per_task(family, spec)
    return WorkloadResult(
        name, spec, serial, other_modes, scaling, compiled, all_cores, flops, actors
    )


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
        below = result.overhead_below_bar_from(n)
        where = f"from meta-batch {below} on" if below else f"at no meta-batch size up to {largest}"
        print(f"overhead below {OVERHEAD_BAR:.0%} with {actors_label(n)}: {where}")
    if result.compiled:
        print("the same with compile_inner_loop (each actor compiled its step before the timing)")
        rows(sorted({m.meta_batch_size for m in result.compiled}), compiled=True)


def scaling_png(result: WorkloadResult) -> bytes:
    """Tasks/s and the service's overhead against the meta-batch size, one line per path."""
    figure, (rate, overhead) = plt.subplots(1, 2, figsize=(11, 4))
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
    plt.close(figure)
    return buffer.getvalue()


@dataclass(frozen=True)
class Bar:
    """One of the targets the throughput issue sets, and what this run measured."""

    name: str
    target: str
    measured: float
    met: bool


def bars(results: dict[str, WorkloadResult], roofline: float) -> list[Bar]:
    """Issue 5's bars, for the workloads measured (`roofline`: one thread's matmul GFLOP/s)."""
    found = []
    if sine := results.get("sine"):
        targets = [("vectorised", 0, 32, 10.0), ("service", 2, 32, 5.0), ("service", 2, 128, 10.0)]
        for compiled in (False, True):
            for path, actors, size, target in targets:
                m = sine.at(path, actors, size, compiled)
                ratio = m.tasks_per_s / sine.serial.tasks_per_s
                where = actors_label(actors) if actors else "one process"
                name = f"sine {path}, {where}, meta-batch {size}" + (
                    ", compiled" if compiled else ""
                )
                found.append(Bar(name, f">= {target:g}x serial", ratio, ratio >= target))
        for m in sine.all_cores:
            if m.path == "vectorised":  # the whole machine for both loops, each at its best
                ratio = m.tasks_per_s / sine.best_serial().tasks_per_s
                where = f"one process, {m.threads} threads, meta-batch {m.meta_batch_size}"
                name = f"sine vectorised, {where}"
                found.append(Bar(name, ">= 10x best serial", ratio, ratio >= 10.0))
    if omniglot := results.get("omniglot"):
        m = omniglot.at("service", 2, omniglot.spec.meta_batch_size)
        overhead = 100 * m.overhead_fraction
        roof = 100 * omniglot.gflops(m) / (roofline * m.actors)
        found += [
            Bar("omniglot Ray overhead, 2 actors", "< 10 % of a round", overhead, overhead < 10),
            Bar("omniglot GFLOP/s, 2 actors", ">= 50 % of the roof", roof, roof >= 50),
        ]
    return found


def print_bars(found: list[Bar]) -> None:
    print(f"\n{'bar':<56}{'target':>22}{'measured':>10}{'met':>6}")
    for bar in found:
        print(f"{bar.name:<56}{bar.target:>22}{bar.measured:>10.2f}{'yes' if bar.met else 'no':>6}")


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
        "overhead_below_10pct_from": {n: result.overhead_below_bar_from(n) for n in result.actors},
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
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
    args = parser.parse_args()
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
    # core, the controller still gets one at once for its dispatch, gather and update (at
    # niceness 0 a round of 32 sine tasks on 2 actors took ~30 % longer). Measured as deployed;
    # RAY_worker_niceness=0 measures actors at the controller's priority.
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
        png.write_bytes(scaling_png(result))
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
