"""Periodic held-out evaluation of φ, per task family: the numbers and figures MLflow gets.

Sine: query MSE after 0, 1, k and `eval_steps` adaptation steps, and the fit figure.
Images: accuracy on tasks of the held-out classes for each K of `eval_shots` (mean and 95 %
confidence interval over tasks), and a grid of query images with their predicted labels.
"""

import math
from dataclasses import dataclass
from functools import partial
from typing import Protocol

from reptile.evaluate import adapted_accuracy, evaluate
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


@dataclass
class FewShotEvaluation:
    spec: ImageJobSpec
    dataset: str
    metric_prefix: str = "eval_acc"

    def __post_init__(self) -> None:
        options = self.spec.task_options(self.dataset)
        self.families = {
            k: make_family(self.spec.task, **options, split="test", eval_shots=k)
            for k in self.spec.eval_shots
        }
        self.model = next(iter(self.families.values())).make_model()
        self.seeds = eval_task_seeds(self.spec.eval_tasks)

    def __call__(self, phi: Params, done: int) -> tuple[dict[str, float], dict[str, Drawing]]:
        spec = self.spec
        metrics = {}
        for k, family in self.families.items():
            accuracies = [
                adapted_accuracy(
                    family,
                    self.model,
                    phi,
                    family.sample_eval_task(seed),
                    steps=spec.eval_steps,
                    lr=spec.inner_lr,
                    optimizer=spec.inner_optimizer,
                    transductive=spec.transductive,
                )
                for seed in self.seeds
            ]
            name = f"eval_acc_{spec.ways}w{k}s"
            metrics[name], metrics[f"{name}_ci95"] = mean_and_ci95(accuracies)
        k, family = next(iter(self.families.items()))
        figure = partial(
            prediction_grid_png,
            family,
            family.make_model(),  # its own: `functional_call` swaps a module's weights in
            phi,
            family.sample_eval_task(self.seeds[0]),
            steps=spec.eval_steps,
            lr=spec.inner_lr,
            optimizer=spec.inner_optimizer,
            title=f"round {done}: held-out {spec.ways}-way {k}-shot",
        )
        return metrics, {"plots/predictions.png": figure}


def evaluation_for(spec: AnyJobSpec, dataset: str | None) -> Evaluation:
    if isinstance(spec, SineJobSpec):
        return SineEvaluation(spec)
    assert dataset is not None, "image jobs are evaluated on their prepared data set"
    return FewShotEvaluation(spec, dataset)
