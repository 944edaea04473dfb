"""The timings: the serial loop, and the trainer's own round loop (`service.trainer.MetaTrainer`)
run in this process ("vectorised") or on the Ray worker pool ("service"), with the same seeds
and tasks; and the roofline and FLOPs the rates are set against."""

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import get_args

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.throughput.inprocess import InProcessRunner, NullSink
from bench.throughput.workloads import Effort, sized
from reptile.params import init_params
from reptile.serial import train_serial
from reptile.tasks import TaskFamily, make_family, task_seeds
from reptile.tasks.base import Batching
from service.runtime import make_pool, make_tracker, prepare_dataset
from service.settings import Settings
from service.specs import AnyJobSpec
from service.trainer import MetaTrainer, MetricsSink, Progress, RoundRunner
from workers.pool import WorkerPool


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
    mode: str = "-"  # how the worker batched a chunk's tasks, `Batching` (serial: "-")
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


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads in this process set to `count` for the block."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


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


def flops_per_task(
    family: TaskFamily, runner: InProcessRunner, spec: AnyJobSpec
) -> dict[str, float]:
    """FLOPs of one task on the serial path (its inner loop) and on a worker (the inner loop,
    then the loss of W_i on its first mini-batch), counted by running each once."""
    with FlopCounterMode(display=False) as serial:
        train_serial(family, sized(spec, 1, 1).meta_config(), spec.seed)
    phi = init_params(family.make_model(), spec.seed)
    with FlopCounterMode(display=False) as vectorised:
        runner.run_round(phi, task_seeds(spec.seed, 0, 1), spec.inner_config())
    return {"serial": serial.get_total_flops(), "vectorised": vectorised.get_total_flops()}


def measure_serial(family: TaskFamily, spec: AnyJobSpec) -> Measurement:
    """The paper's loop as `reptile.serial` writes it; all of its time counts as compute.

    One untimed task first, as for the other paths: torch's first autograd and optimiser calls
    cost far more than later ones, which would otherwise be charged to the serial loop alone.
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


def measure_trainer(
    path: str,
    spec: AnyJobSpec,
    runner: RoundRunner,
    sink: MetricsSink,
    folder: Path,
    dataset: str | None,
    before_window: Callable[[], object] = lambda: None,
) -> Measurement:
    """`spec.rounds` rounds of `MetaTrainer`, timed between its progress reports.

    The job runs one round more than `spec` says. The window runs from the report of round 0
    (after the initial evaluation, and after `before_window()`) to the one before the last
    round (which evaluates and checkpoints), so it holds `spec.rounds` plain rounds.
    """
    job = sized(spec, spec.meta_batch_size, spec.rounds + 1)
    stamps: list[tuple[float, Progress]] = []

    def stamp(progress: Progress) -> None:
        if progress.round == 0:
            before_window()
        stamps.append((time.perf_counter(), progress))

    checkpoint = folder / "checkpoint.safetensors"
    MetaTrainer(job, runner, sink, checkpoint, on_progress=stamp, dataset=dataset).run()
    window = stamps[:-1]
    rounds = [progress.metrics for _, progress in window[1:]]
    seconds = window[-1][0] - window[0][0]
    round_seconds = sum(metrics["round_seconds"] for metrics in rounds)
    compute = sum(metrics["compute_seconds"] for metrics in rounds)
    return Measurement(
        path,
        spec.num_workers if path == "service" else 0,
        spec.meta_batch_size,
        len(rounds),
        seconds,
        compute,
        round_seconds - compute,
        seconds - round_seconds,
    )


def label(batching: str, spec: AnyJobSpec) -> str:
    """How a chunk runs: the family's batching, "+c" when the inner step is compiled."""
    return batching + ("+c" if spec.compile_inner_loop else "")


def measure_vectorised(
    runner: InProcessRunner, spec: AnyJobSpec, folder: Path, dataset: str | None
) -> Measurement:
    """The rounds with every round's tasks adapted at once by one worker, in this process."""
    # First-call costs (and compiling) only: two tasks (a whole Omniglot round would take
    # seconds; a one-task chunk would compile a graph of its own)
    phi = init_params(runner.worker.model, spec.seed)
    runner.run_round(
        phi, task_seeds(spec.seed, 0, 2), spec.inner_config(), compile=spec.compile_inner_loop
    )
    measured = measure_trainer("vectorised", spec, runner, NullSink(), folder, dataset)
    return replace(measured, mode=label(runner.batching, spec), threads=torch.get_num_threads())


def measure_service(
    settings: Settings, pool: WorkerPool, spec: AnyJobSpec, dataset: str | None, mode: str
) -> Measurement:
    """The rounds through the Ray worker pool, logged to MLflow by the service's tracker; the
    tracker draws round 0's figures before the timing window opens."""
    folder = settings.data_dir / "runs" / f"{spec.name}-{time.time_ns()}"
    tracker = make_tracker(
        settings,
        spec,
        run_name=spec.name or spec.task,
        tags={"source": "bench.throughput"},
        staging_dir=folder / "mlflow-staging",
    )
    measured = measure_trainer(
        "service", spec, pool, tracker, folder, dataset, lambda: tracker.flush(timeout=120)
    )
    tracker.finish("FINISHED")
    return replace(measured, peak_rss_bytes=pool.peak_rss_bytes(), mode=mode)


def other_runners(spec: AnyJobSpec, dataset: str | None, used: str) -> list[InProcessRunner]:
    """In-process runners of `spec`'s family in every other batching mode its model supports."""
    runners = []
    for batching in get_args(Batching):
        if batching != used:
            try:
                runners.append(
                    InProcessRunner(spec.task, spec.task_options(dataset) | {"batching": batching})
                )
            except ValueError:  # e.g. Conv4 cannot take stacked weights
                continue
    return runners


def run_workload(
    name: str, spec: AnyJobSpec, settings: Settings, effort: Effort, actors: tuple[int, ...]
) -> WorkloadResult:
    """Serial and the other modes at the spec's meta-batch size; vectorised and service at every
    size; first, before the actors start, serial and vectorised on all cores.

    The paths of one meta-batch size run back to back, the table's size first, so that a
    neighbour's load on a shared machine weighs on the paths compared alike.
    """
    dataset = prepare_dataset(settings, spec)
    options = spec.task_options(dataset)
    family = make_family(spec.task, **options)
    folder = settings.data_dir / "runs" / f"{spec.name}-in-process"  # its checkpoints
    size = spec.meta_batch_size
    table = sized(spec, size, effort.rounds(size))  # the side-by-side table's rounds
    # Before any actor starts: beside idle actors, OpenMP's extra threads gain less.
    all_cores = []
    if (cores := os.cpu_count() or 1) > 1:
        with torch_threads(cores):
            everywhere = InProcessRunner(spec.task, options)
            all_cores = [
                measure_serial(family, table),
                measure_vectorised(everywhere, table, folder, dataset),
            ]
    runner = InProcessRunner(spec.task, options)
    pools = {n: make_pool(settings, sized(spec, 1, 1, num_workers=n), dataset) for n in actors}
    try:
        phi = init_params(family.make_model(), spec.seed)
        for n, pool in pools.items():  # a task per actor, untimed, starts and warms them up
            pool.run_round(phi, task_seeds(spec.seed, 0, n), spec.inner_config())

        def measure(size: int, compiled: bool = False) -> list[Measurement]:
            timed = sized(spec, size, effort.rounds(size), compile_inner_loop=compiled)
            vectorised = measure_vectorised(runner, timed, folder, dataset)
            if compiled:  # each actor compiles its step before the timing, as in a long job
                for n, pool in pools.items():
                    seeds = task_seeds(spec.seed, 0, 2 * n)
                    pool.run_round(phi, seeds, timed.inner_config(), compile=True)
            suffix = "-compiled" if compiled else ""
            services = [
                measure_service(
                    settings,
                    pools[n],
                    sized(
                        timed,
                        size,
                        timed.rounds,
                        num_workers=n,
                        name=f"{spec.name}-{n}x-mb{size}{suffix}",
                    ),
                    dataset,
                    label(runner.batching, timed),
                )
                for n in actors
            ]
            return [vectorised, *services]

        serial = measure_serial(family, table)
        scaling = measure(size)
        other_modes = [
            measure_vectorised(other, table, folder, dataset)
            for other in other_runners(spec, dataset, runner.batching)
        ]
        for extra in effort.meta_batch_sizes:
            if extra != size:
                scaling += measure(extra)
        compiled = [m for extra in effort.compiled_sizes for m in measure(extra, compiled=True)]
    finally:
        for pool in pools.values():
            pool.shutdown()
    flops = flops_per_task(family, runner, spec)
    return WorkloadResult(
        name, spec, serial, other_modes, scaling, compiled, all_cores, flops, actors
    )
