"""Figures logged to MLflow: the sine fit (as in the Reptile blog), a few-shot prediction grid
and the learning curve.

Drawn with matplotlib's object-oriented `Figure`, never pyplot: pyplot keeps global state, and
these figures are drawn on the trackers' background threads, several jobs at a time.
"""

import io
from collections.abc import Callable

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn
from torch.func import functional_call

from reptile.evaluate import adapt_and_predict
from reptile.inner import InnerConfig
from reptile.params import Params
from reptile.tasks import EvalTask, TaskFamily
from reptile.tasks.sine import SineFamily

Drawing = Callable[[], bytes]  # a figure to draw when called, as PNG bytes


def _png(figure: Figure, *, tight: bool = False) -> bytes:
    """The figure as PNG bytes; `tight` crops its margins, which costs a second layout pass
    (a third of a line plot's drawing time)."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight" if tight else None)
    return buffer.getvalue()


def _line_figure() -> tuple[Figure, Axes]:
    """A line plot with room on its right for the legend (`_png_with_legend`): the curves
    reach every corner of the axes, so a legend inside would cover some of them."""
    figure = Figure(figsize=(8.5, 4))
    figure.subplots_adjust(right=0.74)
    return figure, figure.subplots()


def _png_with_legend(figure: Figure, axes: Axes) -> bytes:
    axes.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return _png(figure)


def sine_fit_png(
    family: SineFamily, phi: Params, config: InnerConfig, *, seed: int, title: str
) -> bytes:
    """True curve, φ's prediction, the prediction after adapting as `config` says, the shots."""
    model = family.make_model()
    task = family.sample_eval_task(seed)
    x = task.query.inputs  # (50, 1)
    before = functional_call(model, phi, (x,)).detach()
    after = adapt_and_predict(family.loss, model, phi, task.support, x, config).predictions
    figure, axes = _line_figure()
    axes.plot(x, task.query.targets, "k-", label="true")
    axes.plot(x, before, "b--", label="before adaptation (φ)")
    axes.plot(x, after, "r-", label=f"after {config.steps} steps")
    axes.plot(task.support.inputs, task.support.targets, "ko", label="support points")
    axes.set(xlabel="x", ylabel="y", title=title, ylim=(-5.5, 5.5))
    return _png_with_legend(figure, axes)


def learning_curve_png(history: list[dict[str, float]], metric_prefix: str) -> bytes:
    """Held-out metrics (`metric_prefix`*) against round: losses on a log scale, accuracies
    with their 95 % confidence intervals as error bars."""
    figure, axes = _line_figure()
    keys = dict.fromkeys(  # in the evaluation's order: before, then after 1, 5, 32 steps
        k for row in history for k in row if k.startswith(metric_prefix) and not k.endswith("_ci95")
    )
    rounds = [row["round"] for row in history]
    for key in keys:
        values = [row.get(key, float("nan")) for row in history]
        if any(f"{key}_ci95" in row for row in history):
            errors = [row.get(f"{key}_ci95", 0.0) for row in history]
            axes.errorbar(rounds, values, yerr=errors, marker="o", capsize=3, label=key)
        else:  # a plain line draws in half the time of error bars of zero
            axes.plot(rounds, values, marker="o", label=key)
    loss = "mse" in metric_prefix
    axes.set(xlabel="round", ylabel=metric_prefix, title="Learning curve")
    axes.set_yscale("log" if loss else "linear")
    return _png_with_legend(figure, axes)


def prediction_grid_png(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    task: EvalTask,
    config: InnerConfig,
    *,
    title: str,
) -> bytes:
    """The support images by class, then each query image with its predicted label, after
    adapting as `config` says."""
    predicted = adapt_and_predict(
        family.loss, model, phi, task.support, task.query.inputs, config
    ).predictions.argmax(-1)
    rows = [("support", task.support, task.support.targets), ("query", task.query, predicted)]
    columns = max(len(t.inputs) for _, t, _ in rows)
    figure = Figure(figsize=(columns * 0.9, 2.4))
    axes = figure.subplots(2, columns, squeeze=False)
    for row, (kind, part, labels) in enumerate(rows):
        for column in range(columns):
            axis = axes[row][column]
            axis.axis("off")
            if column >= len(part.inputs):
                continue
            image = part.inputs[column].permute(1, 2, 0).squeeze(-1)  # (H, W) or (H, W, 3)
            axis.imshow(image, cmap="gray" if image.dim() == 2 else None)
            right = kind == "support" or labels[column] == part.targets[column]
            axis.set_title(str(int(labels[column])), fontsize=7, color="black" if right else "red")
    figure.suptitle(f"{title}: support labels, then predictions (red: wrong)", fontsize=8)
    return _png(figure, tight=True)  # the grid's small images leave wide default margins
