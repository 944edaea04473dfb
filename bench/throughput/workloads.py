"""What the throughput bench measures: the sine and Omniglot jobs, the meta-batch sizes and
rounds of a quick and of a full run, and the actor counts of the service path."""

from dataclasses import dataclass
from pathlib import Path

from service.specs import AnyJobSpec, OmniglotJobSpec, SineJobSpec

SHARED_OMNIGLOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot"
HEADLINE = "sine"  # the workload whose numbers head the --json line
BAR_ACTORS = (1, 2)  # always measured: the bars and the --json line read them


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
    The service path's rounds are split over its actors (`execution="split"`), at every actor
    count: what `python -m bench.served` compares the served default job with.
    """

    spec: AnyJobSpec
    quick: Effort
    full: Effort


WORKLOADS = {
    "sine": Workload(
        SineJobSpec(
            name="bench-sine",
            meta_batch_size=32,
            inner_steps=5,
            eval_every=0,
            eval_tasks=1,
            execution="split",
        ),
        quick=Effort(  # ≥ 8 rounds a size: a shorter timing window is at one slow moment's mercy
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
            execution="split",
        ),
        quick=Effort((32,), tasks=32, min_rounds=1, max_rounds=1, compiled_sizes=(32,)),
        full=Effort((32,), tasks=320, min_rounds=10, max_rounds=10, compiled_sizes=(32,)),
    ),
}


def sized(spec: AnyJobSpec, meta_batch_size: int, rounds: int, **changes: object) -> AnyJobSpec:
    """`spec` at another meta-batch size and length (validated like any job), checkpointed at
    its last round only."""
    return type(spec).model_validate(
        spec.model_dump()
        | {"meta_batch_size": meta_batch_size, "rounds": rounds, "checkpoint_every": rounds}
        | changes
    )


def actors_label(count: int) -> str:
    return f"{count} actor" + ("s" if count > 1 else "")
