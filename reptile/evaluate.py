"""Adapt-and-score on held-out tasks: how good φ is as an initialisation for new tasks."""

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat

import torch
from torch import Tensor, nn
from torch.func import functional_call

from reptile.inner import (
    BatchLoss,
    InnerOptimizer,
    LossFn,
    adapt,
    chunk_gradient,
    chunk_loss,
    full_batches,
    make_step,
    stacked_copies,
    task_loss,
    trajectory,
)
from reptile.params import Params
from reptile.tasks import EvalTask, Task, TaskFamily
from reptile.tasks.base import Gradient, stack


def query_losses(
    loss: BatchLoss,
    gradient: Gradient,
    phi: Params,
    support: Task,
    query: Task,
    step_counts: Iterable[int],
    lr: float,
    optimizer: InnerOptimizer,
) -> dict[int, Tensor]:
    """Query loss after adapting to the support set for each of `step_counts` (0 = φ itself).

    One adaptation of the most steps, scored on its way: full-batch steps are deterministic,
    so a shorter adaptation is a prefix of it. `loss` may be per task over stacked tasks
    (`tasks_loss`, with φ stacked alike): then every loss is a (tasks,) tensor. `gradient` is
    that of `loss`, as `chunk_gradient` gives it.
    """
    counts = set(step_counts)
    step = make_step(gradient, lr=lr, optimizer=optimizer)
    batches = repeat((support.inputs, support.targets), max(counts))
    with torch.no_grad():
        losses = {0: loss(phi, query.inputs, query.targets)} if 0 in counts else {}
        for steps, (weights, _) in enumerate(trajectory(step, phi, batches), start=1):
            if steps in counts:
                losses[steps] = loss(weights, query.inputs, query.targets)
    return losses


def evaluate(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    step_counts: Iterable[int],
    lr: float,
    optimizer: InnerOptimizer,
) -> dict[int, float]:
    """Mean query loss over the held-out tasks of `seeds`, per number of adaptation steps.

    The tasks adapt all at once where the family batches its tasks (held-out tasks share their
    shapes too), else one after another, as `run_tasks` does.
    """
    step_counts = sorted(set(step_counts))
    tasks = [family.sample_eval_task(s) for s in seeds]
    loss, gradient = chunk_loss(family, model), chunk_gradient(family, model)
    if family.batching == "loop":
        per_task = [
            query_losses(loss, gradient, phi, t.support, t.query, step_counts, lr, optimizer)
            for t in tasks
        ]
        losses = {k: torch.stack([p[k] for p in per_task]) for k in step_counts}
    else:
        losses = query_losses(
            loss,
            gradient,
            stacked_copies(phi, len(tasks)),
            stack([t.support for t in tasks]),
            stack([t.query for t in tasks]),
            step_counts,
            lr,
            optimizer,
        )
    return {k: v.mean().item() for k, v in losses.items()}


@dataclass(frozen=True)
class Adaptation:
    """The result of adapting φ to one new task's support set."""

    weights: Params
    loss_before: float  # support loss of φ
    loss_after: float  # support loss of the adapted weights
    predictions: Tensor  # the adapted model's outputs at the query inputs


def adapt_and_predict(
    loss_fn: LossFn,
    model: nn.Module,
    phi: Params,
    support: Task,
    query_inputs: Tensor,
    *,
    steps: int,
    lr: float,
    optimizer: InnerOptimizer,
    transductive: bool = True,
) -> Adaptation:
    """Adapt φ with `steps` full-batch steps on `support`, then predict `query_inputs`.

    Takes the loss rather than the task family, so a registered model adapts without the
    family's data set. `transductive` only matters for models with batch norm (see `classify`).
    """
    weights = adapt(
        model,
        phi,
        support,
        loss_fn=loss_fn,
        batches=full_batches(len(support.inputs), steps),
        lr=lr,
        optimizer=optimizer,
    )
    with torch.no_grad():
        return Adaptation(
            weights=weights,
            loss_before=task_loss(model, phi, loss_fn, support).item(),
            loss_after=task_loss(model, weights, loss_fn, support).item(),
            predictions=classify(model, weights, support.inputs, query_inputs, transductive),
        )


def accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """The fraction of rows whose highest logit is the target class, as a 0-d tensor."""
    return (logits.argmax(dim=-1) == targets).float().mean()


def classify(
    model: nn.Module, weights: Params, support: Tensor, queries: Tensor, transductive: bool
) -> Tensor:
    """Logits (queries, ways) of the adapted model.

    Transductive (the paper): the queries form one batch, so batch norm uses their statistics.
    Otherwise each query is classified in a batch with the support set alone.
    """
    with torch.no_grad():
        if len(queries) == 0:  # nothing to classify: an empty (0, ways) batch
            return functional_call(model, weights, (support,))[:0]
        if transductive:
            return functional_call(model, weights, (queries,))
        return torch.stack(
            [functional_call(model, weights, (torch.cat([support, q[None]]),))[-1] for q in queries]
        )


@dataclass(frozen=True)
class HeldOutConfig:
    """How a held-out classification task is scored: `steps` full-batch steps of `optimizer`
    on its support set, then the accuracy on its queries (`classify` says `transductive`)."""

    steps: int
    lr: float
    optimizer: InnerOptimizer
    transductive: bool = True


def held_out_accuracies(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    config: HeldOutConfig,
    device: torch.device | str = "cpu",
) -> list[float]:
    """`adapted_accuracy` of each held-out task of `seeds`, in order, on `device` (where
    `model` must be already), one task after another: each task's own batch statistics."""
    phi = {name: t.to(device) for name, t in phi.items()}
    return [
        adapted_accuracy(
            family,
            model,
            phi,
            family.sample_eval_task(seed).to(device),
            steps=config.steps,
            lr=config.lr,
            optimizer=config.optimizer,
            transductive=config.transductive,
        )
        for seed in seeds
    ]


def adapted_accuracy(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    task: EvalTask,
    *,
    steps: int,
    lr: float,
    optimizer: InnerOptimizer,
    transductive: bool = True,
) -> float:
    """Query accuracy after `steps` full-batch steps on the support set."""
    weights = adapt(
        model,
        phi,
        task.support,
        loss_fn=family.loss,
        batches=full_batches(len(task.support.inputs), steps),
        lr=lr,
        optimizer=optimizer,
    )
    logits = classify(model, weights, task.support.inputs, task.query.inputs, transductive)
    return accuracy(logits, task.query.targets).item()
