"""The meta-training loop of one job, shared by the server and `reptile train`.

One readable loop, in sections: rounds (split over the actors: seeds → dispatch → collect →
meta-update; or whole rounds in one actor, `service.execution`) → log → evaluate → checkpoint →
stop check. Collaborators (the worker pool, the tracker) are passed in, so the loop runs the same
with Ray or with small stand-ins.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from reptile.algorithms import AlgorithmConfig
from reptile.inner import InnerConfig
from reptile.meta import MetaOptimizer, meta_update
from reptile.params import Params, from_numpy, init_params, to_numpy
from reptile.tasks import task_seeds
from service.evaluation import evaluation_for
from service.execution import ExecutionPlan
from service.plots import Drawing, learning_curve_png
from service.specs import AnyJobSpec
from service.weights import Checkpoint, write_checkpoint
from workers.actor import RoundsOutput, RoundsRequest
from workers.pool import RoundOutput

log = logging.getLogger(__name__)


class RoundRunner(Protocol):
    """Runs the inner loops of one round, or whole rounds, and scores an image job's held-out
    tasks (the Ray `WorkerPool`, or a stand-in in tests)."""

    def run_round(
        self,
        phi: Params,
        seeds: list[int],
        config: InnerConfig,
        *,
        compile: bool,
        algorithm: AlgorithmConfig,
    ) -> RoundOutput: ...

    def run_rounds(self, request: RoundsRequest) -> RoundsOutput: ...

    def keep(self, count: int) -> None: ...

    def score_held_out(
        self,
        phi: Params,
        seeds: list[int],
        family: dict[str, Any],
        config: InnerConfig,
        transductive: bool,
    ) -> list[float]: ...


class MetricsSink(Protocol):
    """Where metrics, artifacts and figures go (the MLflow `Tracker`, or a stand-in in tests)."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_artifact(self, data: bytes, artifact_path: str) -> None: ...

    def log_figure(self, draw: Drawing, artifact_path: str) -> None: ...

    def set_tag(self, key: str, value: str) -> None: ...


class Divergence(RuntimeError):
    """The meta-loss or the weights stopped being finite; φ was not updated."""


@dataclass(frozen=True)
class RoundNumbers:
    """What one completed round measured, whichever plan ran it."""

    loss_before: np.ndarray  # (tasks,)
    loss_after: np.ndarray  # (tasks,)
    epsilon: float
    compute_seconds: float
    work_seconds: float  # Σ over the round's calls' inner loops (in_actor: compute_seconds)


@dataclass(frozen=True)
class Progress:
    """What the trainer reports after each round."""

    round: int  # rounds completed
    metrics: dict[str, float]
    evaluation: dict[str, float] | None = None  # present on rounds that evaluated
    checkpoint_round: int | None = None  # present on rounds that wrote a checkpoint


@dataclass
class MetaTrainer:
    spec: AnyJobSpec
    runner: RoundRunner
    sink: MetricsSink
    checkpoint_path: Path
    on_progress: Callable[[Progress], None] = lambda progress: None
    resume: Checkpoint | None = None
    dataset: str | None = None  # an image job's prepared data set
    history: list[dict[str, float]] = field(default_factory=list)
    # Figures are for people watching: redrawn at most this often, and at the last round
    # (drawing holds the GIL the rounds need).
    figure_interval_s: float = 10.0

    def __post_init__(self) -> None:
        self.family = self.spec.family(self.dataset)
        self.model = self.family.make_model()
        self.evaluation = evaluation_for(self.spec, self.dataset, self.runner.score_held_out)
        self.config = self.spec.meta_config()
        if self.resume is None:
            self.start_round = 0
            self.meta = MetaOptimizer(
                init_params(self.model, self.spec.seed), self.config.outer_optimizer
            )
        else:
            self.start_round = self.resume.round
            self.meta = MetaOptimizer(self.resume.phi, self.config.outer_optimizer)
            self.meta.load_state_dict(self.resume.optimizer_state)
            self.history = list(self.resume.history)
        self.phi: Params = self.meta.phi  # the latest φ, readable from other threads
        self.round = self.start_round  # rounds completed
        self.checkpointed = self.start_round  # the round of the checkpoint on disk
        self.figures_drawn_at: float | None = None  # time.monotonic() of the last figures
        self.plan = ExecutionPlan(self.spec.execution, self.spec.num_workers)
        self.diverged = False  # the last round tried had a non-finite update

    def run(self, should_stop: Callable[[], bool] = lambda: False) -> bool:
        """Train until the last round (returns True) or until `should_stop()` (returns False).

        Either way φ and the outer optimiser are checkpointed at the round reached; so they
        are when a round fails (workers lost, divergence), at the last round completed. A job
        stopped before it starts (while its workers started) stops at once, with nothing new.
        """
        if should_stop():
            return False
        if self.start_round == 0 and not self.history:
            self.on_progress(Progress(0, {}, evaluation=self.evaluate(0)))
        try:
            return self._rounds(should_stop)
        except Exception:
            if self.round > self.checkpointed:  # keep the rounds done so far for a resume
                try:
                    self.checkpoint(self.round)
                except Exception:
                    log.exception("could not checkpoint round %d of a failing job", self.round)
            raise

    def _rounds(self, should_stop: Callable[[], bool]) -> bool:
        spec = self.spec
        if self.plan.chosen is not None:
            self._plan_chosen()
        while self.round < spec.rounds:
            # rounds: the next one split over the actors, or several whole ones in one actor
            plan, stop = self.plan.next(self.round, self._boundary())
            started = time.perf_counter()
            rounds = self._split_round() if plan == "split" else self._in_actor(stop)
            seconds = time.perf_counter() - started
            work = sum(numbers.work_seconds for numbers in rounds)
            if rounds and self.plan.measured(plan, len(rounds), seconds, work):
                self._plan_chosen()
            # log: each round its own step, the call's time shared between its rounds
            for index, numbers in enumerate(rounds, start=self.round - len(rounds) + 1):
                metrics = {
                    "meta_loss_before": float(numbers.loss_before.mean()),
                    "meta_loss_after": float(numbers.loss_after.mean()),
                    "epsilon": numbers.epsilon,
                    "tasks_per_s": len(numbers.loss_after) * len(rounds) / seconds,
                    "round_seconds": seconds / len(rounds),
                    "compute_seconds": numbers.compute_seconds,
                }
                self.sink.log_metrics(metrics, step=index)
                if index < self.round or self.diverged:  # the last: after its evaluation
                    self.on_progress(Progress(index, metrics))
            if self.diverged:
                raise Divergence(
                    f"meta-loss became non-finite in round {self.round + 1}; "
                    f"φ kept from round {self.round}"
                )
            # evaluate, checkpoint, stop (a call's rounds end at the next of these)
            done = self.round
            last = done == spec.rounds
            evaluation = None
            if last or (spec.eval_every and done % spec.eval_every == 0):
                evaluation = self.evaluate(done)
            stopping = not last and should_stop()
            checkpointed = None
            if last or stopping or done % spec.checkpoint_every == 0:
                self.checkpoint(done)
                checkpointed = done
            self.on_progress(Progress(done, metrics, evaluation, checkpointed))
            if stopping:
                return False
        return True

    def _boundary(self) -> int:
        """The next round that evaluates or checkpoints, or the last."""
        done, spec = self.round, self.spec
        due = [spec.rounds, done + spec.checkpoint_every - done % spec.checkpoint_every]
        if spec.eval_every:
            due.append(done + spec.eval_every - done % spec.eval_every)
        return min(due)

    def _plan_chosen(self) -> None:
        """Tag the run with the plan; an in_actor job gives back the actors it does not use."""
        summary = self.plan.summary()
        log.info("rounds run %s", summary)
        self.sink.set_tag("execution", summary)
        if self.plan.chosen == "in_actor":
            self.runner.keep(1)

    def _split_round(self) -> list[RoundNumbers]:
        """One round: its tasks over the actors, Σ_i d_i back, the meta-update here."""
        round_index, spec = self.round, self.spec
        # seeds: a function of (job seed, round) only, whatever the number of workers
        seeds = task_seeds(spec.seed, round_index, spec.meta_batch_size)
        result = self.runner.run_round(
            self.phi,
            seeds,
            self.config.inner,
            compile=spec.compile_inner_loop,
            algorithm=self.config.algorithm,
        )
        eps = meta_update(
            self.meta,
            result.delta_sum,
            result.count,
            torch.from_numpy(result.loss_after),
            round_index,
            self.config,
        )
        if eps is None:
            self.diverged = True
            return []
        self.phi = self.meta.phi
        self.round += 1
        return [
            RoundNumbers(
                result.loss_before,
                result.loss_after,
                eps,
                result.compute_seconds,
                result.work_seconds,
            )
        ]

    def _in_actor(self, stop: int) -> list[RoundNumbers]:
        """Whole rounds up to `stop` in one actor, from φ and the outer optimiser's state."""
        request = RoundsRequest(
            seed=self.spec.seed,
            start=self.round,
            stop=stop,
            config=self.config,
            phi=to_numpy(self.phi),
            optimizer_state=self.meta.state_dict(),
            compile=self.spec.compile_inner_loop,
        )
        output = self.runner.run_rounds(request)
        self.meta.restore(from_numpy(output.phi), output.optimizer_state)
        self.phi = self.meta.phi
        self.round += output.completed
        self.diverged = output.diverged
        return [
            RoundNumbers(before, after, eps, compute, compute)
            for before, after, eps, compute in zip(
                output.loss_before,
                output.loss_after,
                output.epsilons,
                output.compute_seconds,
                strict=True,
            )
        ]

    def evaluate(self, done: int) -> dict[str, float]:
        """Score φ on the held-out tasks, log the numbers and, when due, hand the figures to the
        sink, which draws them off the job's thread."""
        metrics, figures = self.evaluation(self.phi, done)
        self.sink.log_metrics(metrics, step=done)
        self.history.append({"round": float(done), **metrics})
        now = time.monotonic()
        last_drawn = self.figures_drawn_at
        if (
            done == self.spec.rounds
            or last_drawn is None
            or now - last_drawn >= self.figure_interval_s
        ):
            self.figures_drawn_at = now
            for path, draw in figures.items():
                self.sink.log_figure(draw, path)
            curve = partial(learning_curve_png, list(self.history), self.evaluation.metric_prefix)
            self.sink.log_figure(curve, "plots/learning_curve.png")
        log.info("round %d: %s", done, metrics)
        return metrics

    def checkpoint(self, done: int) -> None:
        """Write the checkpoint atomically, then hand a copy to the tracker."""
        checkpoint = Checkpoint(done, self.phi, self.meta.state_dict(), list(self.history))
        write_checkpoint(self.checkpoint_path, checkpoint)
        self.checkpointed = done
        self.sink.log_artifact(
            self.checkpoint_path.read_bytes(), "checkpoints/checkpoint.safetensors"
        )
