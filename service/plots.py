"""Figures logged to MLflow: the sine fit (as in the Reptile blog) and the learning curve."""

import io

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torch.func import functional_call  # noqa: E402

from reptile.inner import InnerOptimizer, adapt, full_batches  # noqa: E402
from reptile.params import Params  # noqa: E402
from reptile.tasks.sine import SineFamily  # noqa: E402


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def sine_fit_png(
    family: SineFamily,
    phi: Params,
    *,
    seed: int,
    steps: int,
    lr: float,
    optimizer: InnerOptimizer,
    title: str,
) -> bytes:
    """True curve, φ's prediction, the prediction after `steps` adaptation steps, the shots."""
    model = family.make_model()
    task = family.sample_eval_task(seed)
    weights = adapt(
        model,
        phi,
        task.support,
        loss_fn=family.loss,
        batches=full_batches(len(task.support.inputs), steps),
        lr=lr,
        optimizer=optimizer,
    )
    x = task.query.inputs  # (50, 1)
    before = functional_call(model, phi, (x,)).detach()
    after = functional_call(model, weights, (x,)).detach()
    figure, axes = plt.subplots(figsize=(7, 4))
    axes.plot(x, task.query.targets, "k-", label="true")
    axes.plot(x, before, "b--", label="before adaptation (φ)")
    axes.plot(x, after, "r-", label=f"after {steps} steps")
    axes.plot(task.support.inputs, task.support.targets, "ko", label="support points")
    axes.set(xlabel="x", ylabel="y", title=title, ylim=(-5.5, 5.5))
    axes.legend(loc="lower right", fontsize=8)
    return _png(figure)


def learning_curve_png(history: list[dict[str, float]], metric_prefix: str) -> bytes:
    """Held-out loss against round, one line per adaptation length."""
    figure, axes = plt.subplots(figsize=(7, 4))
    keys = sorted({k for row in history for k in row if k.startswith(metric_prefix)})
    rounds = [row["round"] for row in history]
    for key in keys:
        axes.plot(rounds, [row.get(key, float("nan")) for row in history], marker="o", label=key)
    axes.set(xlabel="round", ylabel="held-out loss", yscale="log", title="Learning curve")
    axes.legend(fontsize=8)
    return _png(figure)
