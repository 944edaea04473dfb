"""Sweep specifications: a base job spec, a search space over its fields, and how to search.

Every key of `space` is a job field and every value it can take is checked against the job
spec's own validation at submission (each choice or grid value, both bounds of a range, and
their combinations), so a trial never fails on a value its job would refuse. The space becomes
a Ray Tune param space (`param_space`); Tune's samplers draw the trials.
"""

import itertools
import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, ValidationError, model_validator

from service.specs import AnyJobSpec, JobSpec, parse_spec

# Fields a trial may not vary: the task family and its data, names, the trial's resources
# (Tune reserves one placement group shape per sweep), and the rounds and evaluation interval
# that are the scheduler's time axis.
FIXED_FIELDS = frozenset(
    {
        "task",
        "data",
        "held_out",
        "name",
        "model_name",
        "num_workers",
        "gpus_per_worker",
        "rounds",
        "eval_every",
        "checkpoint_every",
    }
)
# combinations of space values checked together at submission (beyond: each value alone)
MAX_COMBINATIONS_CHECKED = 4096
# Fields that change what an image trial needs of its data set: images per class, the more
# the larger they are. (`ways` would too, but no metric is reported whatever the ways: the
# accuracy's name holds them.)
DATA_FIELDS = ("shots", "queries")

Scalar = int | float | str | bool


class _Dimension(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    def candidates(self) -> list[Scalar]:
        """The values to validate against the job spec: every value, or a range's bounds."""
        raise NotImplementedError

    def tune(self) -> Any:
        """The Ray Tune sampler (or grid) of this dimension."""
        raise NotImplementedError


class LogUniform(_Dimension):
    loguniform: list[FiniteFloat] = Field(
        min_length=2, max_length=2, description="[low, high], 0 < low < high"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "LogUniform":
        low, high = self.loguniform
        if not 0 < low < high:
            raise ValueError("loguniform needs 0 < low < high")
        return self

    def candidates(self) -> list[Scalar]:
        return list(self.loguniform)

    def tune(self) -> Any:
        from ray import tune

        return tune.loguniform(*self.loguniform)


class Uniform(_Dimension):
    uniform: list[FiniteFloat] = Field(
        min_length=2, max_length=2, description="[low, high], low < high"
    )

    @model_validator(mode="after")
    def _ordered(self) -> "Uniform":
        if not self.uniform[0] < self.uniform[1]:
            raise ValueError("uniform needs low < high")
        return self

    def candidates(self) -> list[Scalar]:
        return list(self.uniform)

    def tune(self) -> Any:
        from ray import tune

        return tune.uniform(*self.uniform)


class RandInt(_Dimension):
    randint: list[int] = Field(min_length=2, max_length=2, description="[low, high], both included")

    @model_validator(mode="after")
    def _ordered(self) -> "RandInt":
        if not self.randint[0] < self.randint[1]:
            raise ValueError("randint needs low < high")
        return self

    def candidates(self) -> list[Scalar]:
        return list(self.randint)

    def tune(self) -> Any:
        from ray import tune

        return tune.randint(self.randint[0], self.randint[1] + 1)  # Tune's high is excluded


class Choice(_Dimension):
    choice: list[Scalar] = Field(min_length=1, max_length=100, description="Sampled uniformly")

    def candidates(self) -> list[Scalar]:
        return list(self.choice)

    def tune(self) -> Any:
        from ray import tune

        return tune.choice(self.choice)


class Grid(_Dimension):
    grid: list[Scalar] = Field(
        min_length=1, max_length=100, description="Every value, crossed with the other grids"
    )

    def candidates(self) -> list[Scalar]:
        return list(self.grid)

    def tune(self) -> Any:
        from ray import tune

        return tune.grid_search(self.grid)


Dimension = LogUniform | Uniform | RandInt | Choice | Grid


class SweepSpec(BaseModel):
    """`POST /v1/sweeps`: trials of `base` with fields drawn from `space`, scored on `metric`."""

    model_config = ConfigDict(extra="forbid", strict=True)

    base: JobSpec = Field(description="The job every trial runs, before the space's values")
    space: dict[str, Dimension] = Field(
        min_length=1, max_length=20, description="Job field → its values (a distribution or grid)"
    )
    metric: str = Field(
        default="eval_mse_after_32",
        max_length=100,
        description="The held-out evaluation metric the scheduler compares (reported at each "
        "evaluation, every base.eval_every rounds)",
    )
    mode: Literal["min", "max"] = Field(default="min", description="Whether lower is better")
    trials: int = Field(
        default=8, ge=1, description="Trials in all (with grids: a multiple of the grid's size)"
    )
    max_concurrent: int = Field(default=2, ge=1, description="Trials running at once")
    scheduler: Literal["asha", "fifo"] = Field(
        default="asha", description="asha stops trials whose metric lags at each rung; fifo none"
    )
    grace_period: int | None = Field(
        default=None,
        ge=1,
        description="Rounds a trial runs before ASHA may stop it (default: base.eval_every)",
    )
    reduction_factor: float = Field(
        default=2, gt=1, le=16, description="ASHA keeps the best 1/reduction_factor at a rung"
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1, description="Seeds the sampling of trials")

    @model_validator(mode="after")
    def _consistent(self) -> "SweepSpec":
        base = self.base
        if base.eval_every == 0:
            raise ValueError("base.eval_every must be at least 1: trials report at evaluations")
        fields = type(base).model_fields
        for name, dimension in self.space.items():
            if name in FIXED_FIELDS:
                raise ValueError(f"space.{name}: a sweep cannot vary {name!r}")
            if name not in fields:
                raise ValueError(f"space.{name}: not a field of a {base.task} job")
            for value in dimension.candidates():
                self._check({name: value}, f"space.{name}")
        values = [[(n, v) for v in d.candidates()] for n, d in self.space.items()]
        if len(self.space) > 1 and math.prod(len(v) for v in values) <= MAX_COMBINATIONS_CHECKED:
            for combination in itertools.product(*values):
                self._check(dict(combination), "space")
        if self.trials % self.grid_size:
            raise ValueError(
                f"trials ({self.trials}) must be a multiple of the grid's {self.grid_size} points"
            )
        if self.max_concurrent > self.trials:
            raise ValueError(f"max_concurrent ({self.max_concurrent}) exceeds trials")
        if self.grace_period is not None and self.grace_period > base.rounds:
            raise ValueError(f"grace_period exceeds base.rounds ({base.rounds})")
        return self

    def _check(self, values: dict[str, Scalar], where: str) -> None:
        """Validate base + `values` as a job; its metrics must include `metric`."""
        try:
            spec = self.trial_spec(values)
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg']}" for e in error.errors()
            )
            raise ValueError(f"{where} {values}: {problems}") from None
        if self.metric not in spec.evaluation_metrics():
            known = ", ".join(sorted(spec.evaluation_metrics()))
            raise ValueError(
                f"metric {self.metric!r} is not reported by a trial with {values} (it reports "
                f"{known})"
            )

    @property
    def grid_size(self) -> int:
        return math.prod(len(d.grid) for d in self.space.values() if isinstance(d, Grid))

    @property
    def grace_rounds(self) -> int:
        return self.grace_period or self.base.eval_every

    def trial_spec(self, values: dict[str, Any]) -> AnyJobSpec:
        """The job one trial runs: the base with `values`, checkpointed at each evaluation
        (what Tune keeps of a trial to resume it)."""
        fields = self.base.model_dump() | values | {"checkpoint_every": self.base.eval_every}
        return parse_spec(fields)

    def most_data(self) -> dict[str, Scalar]:
        """The space's largest value of each of `DATA_FIELDS` it varies: the trial that needs
        the most of the data set (every other trial needs no more), checked against the
        prepared data at submission."""
        return {
            name: max(dimension.candidates())  # ints: the job spec (strict) checked them
            for name, dimension in self.space.items()
            if name in DATA_FIELDS
        }

    def param_space(self) -> dict[str, Any]:
        """The space as Ray Tune's param space."""
        return {name: dimension.tune() for name, dimension in self.space.items()}
