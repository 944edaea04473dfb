"""Periodic held-out evaluation of φ, per task family: the numbers and figures MLflow gets.

Sine: query MSE after 0, 1, k and `eval_steps` adaptation steps, and the fit figure.
Images: accuracy on tasks of the held-out classes for each K of `eval_shots` (mean and 95 %
confidence interval over tasks), and a grid of query images with their predicted labels.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Protocol

from reptile.evaluate import evaluate
from reptile.inner import InnerConfig
from reptile.params import Params
from reptile.tasks import eval_task_seeds
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
        self.family = self.spec.family()
        self.model = self.family.make_model()
        self.seeds = eval_task_seeds(self.spec.eval_tasks)

    def __call__(self, phi: Params, done: int) -> tuple[dict[str, float], dict[str, Drawing]]:
        spec, config = self.spec, self.spec.eval_config()
        losses = evaluate(self.family, self.model, phi, self.seeds, config, spec.eval_step_counts())
        metrics = {"eval_mse_before": losses[0]}
        metrics |= {f"eval_mse_after_{k}": v for k, v in losses.items() if k > 0}
        figure = partial(  # the fit after the k steps of a training task, on the support set
            sine_fit_png,
            self.family,
            phi,
            replace(config, steps=spec.inner_steps),
            seed=self.seeds[0],
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


# (φ, seeds of held-out tasks, K shots, how to adapt, transductive) -> accuracy of each task,
# in seed order
HeldOutScorer = Callable[[Params, list[int], int, InnerConfig, bool], list[float]]


@dataclass
class FewShotEvaluation:
    """Held-out accuracies, computed by `score`: the job's worker pool, which splits the tasks
    over its actors (a Conv4 evaluation adapts each task `eval_steps` times: costly for the
    controller's cores, while the actors would wait)."""

    spec: ImageJobSpec
    dataset: str
    score: HeldOutScorer
    metric_prefix: str = "eval_acc"

    def __post_init__(self) -> None:
        # the family of the figure: the first K
        self.shown = self.spec.family(self.dataset, held_out_shots=self.spec.eval_shots[0])
        self.seeds = eval_task_seeds(self.spec.eval_tasks)

    def __call__(self, phi: Params, done: int) -> tuple[dict[str, float], dict[str, Drawing]]:
        spec, config = self.spec, self.spec.eval_config()
        metrics = {}
        for k in spec.eval_shots:
            name = f"eval_acc_{spec.ways}w{k}s"
            accuracies = self.score(phi, self.seeds, k, config, spec.transductive)
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
            spec.eval_config(),
            title=f"round {done}: held-out {spec.ways}-way {spec.eval_shots[0]}-shot",
        )


def evaluation_for(spec: AnyJobSpec, dataset: str | None, score: HeldOutScorer) -> Evaluation:
    """Sine jobs are evaluated in this process (one stacked adaptation); image jobs by
    `score`."""
    if isinstance(spec, SineJobSpec):
        return SineEvaluation(spec)
    assert dataset is not None, "image jobs are evaluated on their prepared data set"
    return FewShotEvaluation(spec, dataset, score)
