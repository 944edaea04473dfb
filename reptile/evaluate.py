"""Adapt-and-score on held-out tasks: how good φ is as an initialisation for new tasks.

Every adaptation here runs as an `InnerConfig` says (a job's `eval_config`, full batches on
the support set); `transductive` says how an adapted classifier predicts (`classify`).
"""

from collections.abc import Iterable
from dataclasses import dataclass
from itertools import repeat

import torch
from torch import Tensor, nn
from torch.func import functional_call

from reptile.gradients import BatchLoss, LossFn, batched_gradient, batched_loss, task_loss
from reptile.inner import InnerConfig, adapt, make_step, stacked_copies, trajectory
from reptile.params import Params
from reptile.tasks import EvalTask, Task, TaskFamily
from reptile.tasks.base import Gradient, stack


def query_losses(
    loss: BatchLoss,
    gradient: Gradient,
    phi: Params,
    support: Task,
    query: Task,
    config: InnerConfig,
    step_counts: Iterable[int],
) -> dict[int, Tensor]:
    """Query loss after adapting to the support set as `config` says, for each of
    `step_counts` (0 = φ itself; none past `config.steps`).

    One adaptation of the most steps, scored on its way: full-batch steps are deterministic,
    so a shorter adaptation is a prefix of it. `loss` may be per task over stacked tasks
    (`tasks_loss`, with φ stacked alike): then every loss is a (tasks,) tensor. `gradient` is
    that of `loss`, as `batched_gradient` gives it.
    """
    counts = set(step_counts)
    if config.batch_size is not None:
        raise ValueError("a held-out task adapts on its whole support set (batch_size None)")
    if max(counts) > config.steps:
        raise ValueError(f"step counts {sorted(counts)} go past the {config.steps} steps")
    step = make_step(gradient, config)
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
    config: InnerConfig,
    step_counts: Iterable[int],
) -> dict[int, float]:
    """Mean query loss over the held-out tasks of `seeds` adapted as `config` says, after each
    of `step_counts` steps.

    The tasks adapt all at once where the family batches its tasks (held-out tasks share their
    shapes too), else one after another, as `run_tasks` does.
    """
    step_counts = sorted(set(step_counts))
    tasks = [family.sample_eval_task(s) for s in seeds]
    loss, gradient = batched_loss(family, model), batched_gradient(family, model)
    if family.batching == "loop":
        per_task = [
            query_losses(loss, gradient, phi, t.support, t.query, config, step_counts)
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
            config,
            step_counts,
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
    config: InnerConfig,
    *,
    transductive: bool = True,
) -> Adaptation:
    """Adapt φ to `support` as `config` says, then predict `query_inputs`.

    Takes the loss rather than the task family, so a registered model adapts without the
    family's data set. `transductive` only matters for models with batch norm (see `classify`).
    """
    weights = adapt(model, phi, support, config, loss_fn=loss_fn)
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


def held_out_accuracies(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    config: InnerConfig,
    *,
    transductive: bool = True,
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
            config,
            transductive=transductive,
        )
        for seed in seeds
    ]


def adapted_accuracy(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    task: EvalTask,
    config: InnerConfig,
    *,
    transductive: bool = True,
) -> float:
    """Query accuracy after adapting to the support set as `config` says."""
    weights = adapt(model, phi, task.support, config, loss_fn=family.loss)
    logits = classify(model, weights, task.support.inputs, task.query.inputs, transductive)
    return accuracy(logits, task.query.targets).item()
