"""The bars the throughput issue (issue 5) set, and this run's value against each: the ratios
to the serial loop, Ray's share of a round, and the share of the roofline reached."""

from dataclasses import dataclass

from bench.throughput.measurement import WorkloadResult
from bench.throughput.workloads import actors_label

OVERHEAD_BAR = 0.10  # the service's overhead, as a fraction of a round's wall time


@dataclass(frozen=True)
class Bar:
    """One of the targets the throughput issue sets, and what this run measured."""

    name: str
    target: str
    measured: float
    met: bool


def overhead_below_bar_from(result: WorkloadResult, actors: int) -> int | None:
    """The smallest meta-batch size from which the service's overhead stays under the bar."""
    below = None
    for size in reversed(result.meta_batch_sizes):
        if result.at("service", actors, size).overhead_fraction >= OVERHEAD_BAR:
            break
        below = size
    return below


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
