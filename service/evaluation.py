"""Periodic held-out evaluation of φ, per task family: the numbers and figures MLflow gets.

Sine: query MSE after 0, 1, k and `eval_steps` adaptation steps, and the fit figure.
Images: accuracy on tasks of the held-out classes for each K of `eval_shots` (mean and 95 %
confidence interval over tasks), and a grid of query images with their predicted labels.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from reptile.evaluate import HeldOutConfig, evaluate
from reptile.params import Params
from reptile.tasks import eval_task_seeds, make_family
from reptile.tasks.sine import SineFamily
from service.plots import Drawing, prediction_grid_png, sine_fit_png
from service.specs import AnyJobSpec, ImageJobSpec, SineJobSpec


class Evaluation(Protocol):
    metric_prefix: str  # what the learning curve plots

    def __call__(self, phi: Params, done: int) -> tuple[dict[str, float], dict[str, Drawing]]:
        """Metrics (name → value) for φ after `done` rounds, and its figures (artifact path →
        drawing), drawn later by the tracker, off the training thread (φ must not change)."""
        ...


@dataclass
class SineEvaluation:
    spec: SineJobSpec
    metric_prefix: str = "eval_mse"

    def __post_init__(self) -> None:
        self.family = SineFamily(**self.spec.task_options())
        self.model = self.family.make_model()
        self.seeds = eval_task_seeds(self.spec.eval_tasks)

    def __call__(self, phi: Params, done: int) -> tuple[dict[str, float], dict[str, Drawing]]:
        spec = self.spec
        losses = evaluate(
            self.family,
            self.model,
            phi,
            self.seeds,
            spec.eval_step_counts(),
            spec.inner_lr,
            spec.inner_optimizer,
        )
        metrics = {"eval_mse_before": losses[0]}
        metrics |= {f"eval_mse_after_{k}": v for k, v in losses.items() if k > 0}
        figure = partial(
            sine_fit_png,
            self.family,
            phi,
            seed=self.seeds[0],
            steps=spec.inner_steps,
            lr=spec.inner_lr,
            optimizer=spec.inner_optimizer,
            title=f"round {done}",
        )
        return metrics, {"plots/sine_fit.png": figure}


def mean_and_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its normal-approximation 95 % confidence interval."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, float("nan")
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, 1.96 * math.sqrt(variance / len(values))


# (φ, seeds of held-out tasks, K shots, how to score) -> accuracy of each task, in seed order
HeldOutScorer = Callable[[Params, list[int], int, HeldOutConfig], list[float]]


@dataclass
class FewShotEvaluation:
    """Held-out accuracies, computed by `score`: the job's worker pool, which splits the tasks
    over its actors (a Conv4 evaluation adapts each task 50 steps: ~35 s of the controller's
    two cores for the defaults, while the actors would wait)."""

    spec: ImageJobSpec
    dataset: str
    score: HeldOutScorer
    metric_prefix: str = "eval_acc"

    def __post_init__(self) -> None:
        self.shown = make_family(  # the family of the figure: the first K
            self.spec.task,
            **self.spec.task_options(self.dataset),
            split="test",
            eval_shots=self.spec.eval_shots[0],
        )
        self.seeds = eval_task_seeds(self.spec.eval_tasks)

    def __call__(self, phi: Params, done: int) -> tuple[dict[str, float], dict[str, Drawing]]:
        spec = self.spec
        config = HeldOutConfig(
            steps=spec.eval_steps,
            lr=spec.inner_lr,
            optimizer=spec.inner_optimizer,
            transductive=spec.transductive,
        )
        metrics = {}
        for k in spec.eval_shots:
            name = f"eval_acc_{spec.ways}w{k}s"
            accuracies = self.score(phi, self.seeds, k, config)
            metrics[name], metrics[f"{name}_ci95"] = mean_and_ci95(accuracies)
        return metrics, {"plots/predictions.png": partial(self._prediction_grid, phi, done)}

    def _prediction_grid(self, phi: Params, done: int) -> bytes:
        """The figure of φ after `done` rounds, built when drawn (not at all when the trainer
        leaves it out), with its own model: `functional_call` swaps a module's weights in."""
        spec = self.spec
        return prediction_grid_png(
            self.shown,
            self.shown.make_model(),
            phi,
            self.shown.sample_eval_task(self.seeds[0]),
            steps=spec.eval_steps,
            lr=spec.inner_lr,
            optimizer=spec.inner_optimizer,
            title=f"round {done}: held-out {spec.ways}-way {spec.eval_shots[0]}-shot",
        )


def evaluation_for(spec: AnyJobSpec, dataset: str | None, score: HeldOutScorer) -> Evaluation:
    """Sine jobs are evaluated in this process (one stacked adaptation, ~20 ms); image jobs
    by `score`."""
    if isinstance(spec, SineJobSpec):
        return SineEvaluation(spec)
    assert dataset is not None, "image jobs are evaluated on their prepared data set"
    return FewShotEvaluation(spec, dataset, score)
