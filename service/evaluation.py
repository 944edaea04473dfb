"""Periodic held-out evaluation of φ, per task family: the numbers and figures MLflow gets.

Sine: query MSE after 0, 1, k and `eval_steps` adaptation steps, and the fit figure.
Images: accuracy on tasks of the held-out classes for each K of `eval_shots` (mean and 95 %
confidence interval over tasks; at the end also 5- and 20-way, to a CI of 1 point), and a grid
of query images with their predicted labels.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from reptile.evaluate import evaluate
from reptile.inner import InnerConfig
from reptile.params import Params
from reptile.tasks import eval_task_seeds
from service.plots import Drawing, prediction_grid_png, sine_fit_png
from service.specs import AnyJobSpec, ImageJobSpec, SineJobSpec, accuracy_metric


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


def accuracy_metrics(
    ways: int, shots: int, accuracies: list[float], *, count: bool
) -> dict[str, float]:
    """One setting's metrics, as a job's evaluations and evaluation runs log them:
    `eval_acc_<w>w<k>s`, its `…_ci95` and, with `count`, the tasks scored `eval_tasks_<w>w<k>s`."""
    name = accuracy_metric(ways, shots)
    accuracy, ci95 = mean_and_ci95(accuracies)
    metrics = {name: accuracy, f"{name}_ci95": ci95}
    if count:
        metrics[f"eval_tasks_{ways}w{shots}s"] = float(len(accuracies))
    return metrics


# (φ, seeds of held-out tasks, their family's options, how to adapt, transductive) ->
# accuracy of each task, in seed order
HeldOutScorer = Callable[[Params, list[int], dict[str, Any], InnerConfig, bool], list[float]]

FINAL_CI95 = 0.01  # the final evaluation draws tasks until its CI half-width is at most this
FINAL_BATCH = 100  # held-out tasks the final evaluation draws at a time


@dataclass
class FewShotEvaluation:
    """Held-out accuracies, computed by `score`: the job's worker pool, which splits the tasks
    over its actors (a Conv4 evaluation adapts each task `eval_steps` times: costly for the
    controller's cores, while the actors would wait).

    Periodic evaluations score the job's own ways on `eval_tasks` fixed tasks. The final one
    (after the last round) scores every setting of `held_out_settings`, each on as many fixed
    tasks as its 95 % CI needs to be at most 1 point (`FINAL_CI95`, up to `final_eval_tasks`).
    """

    spec: ImageJobSpec
    dataset: str
    score: HeldOutScorer
    metric_prefix: str = "eval_acc"

    def __post_init__(self) -> None:
        # the family of the figure: the first K
        self.shown = self.spec.family(self.dataset, held_out_shots=self.spec.eval_shots[0])
        self.seeds = eval_task_seeds(self.spec.eval_tasks)

    def held_out_settings(self, final: bool) -> list[tuple[int, int]]:
        """(ways, shots) scored: the job's ways; at the end also the job's `final_ways`
        (default 5 and 20, the paper's), where the held-out split has the classes."""
        spec, ways = self.spec, {self.spec.ways}
        if final:
            ways |= {w for w in spec.final_ways if w <= self.shown.num_classes}
        return [(w, k) for w in sorted(ways) for k in spec.eval_shots]

    def accuracies(self, phi: Params, ways: int, shots: int, seeds: list[int]) -> list[float]:
        """Each task's accuracy, scored in calls of at most `max_work` (`eval_batches`)."""
        spec = self.spec
        options = spec.held_out_options(self.dataset, ways, shots)
        size = spec.eval_batches(ways, shots, len(seeds))
        accuracies: list[float] = []
        for start in range(0, len(seeds), size):
            chunk = seeds[start : start + size]
            accuracies += self.score(phi, chunk, options, spec.eval_config(), spec.transductive)
        return accuracies

    def tight_accuracies(self, phi: Params, ways: int, shots: int) -> list[float]:
        """Accuracies of fixed held-out tasks, drawn `FINAL_BATCH` at a time until their 95 % CI
        half-width is at most `FINAL_CI95` or `final_eval_tasks` are scored."""
        seeds = eval_task_seeds(self.spec.final_eval_tasks)  # the periodic ones come first
        accuracies: list[float] = []
        while len(accuracies) < len(seeds):
            batch = seeds[len(accuracies) : len(accuracies) + FINAL_BATCH]
            accuracies += self.accuracies(phi, ways, shots, batch)
            if mean_and_ci95(accuracies)[1] <= FINAL_CI95:
                break
        return accuracies

    def __call__(self, phi: Params, done: int) -> tuple[dict[str, float], dict[str, Drawing]]:
        final = done == self.spec.rounds
        metrics: dict[str, float] = {}
        for ways, shots in self.held_out_settings(final):
            if final:
                accuracies = self.tight_accuracies(phi, ways, shots)
            else:
                accuracies = self.accuracies(phi, ways, shots, self.seeds)
            metrics |= accuracy_metrics(ways, shots, accuracies, count=final)
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
