"""The inner loop: k steps of SGD or Adam on one task, starting from the meta-weights φ.

Written functionally (`torch.func.functional_call` + `torch.func.grad`) over a `Params` dict, so
that φ is never mutated and the same step can later be vectorised over tasks with `vmap`.
Optimiser state (Adam's moments) starts from zero for every task and never carries over.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from reptile.params import Params, subtract, total
from reptile.tasks.base import Task, TaskFamily

InnerOptimizer = Literal["sgd", "adam"]
LossFn = Callable[[Tensor, Tensor], Tensor]

# The paper's inner Adam uses β1 = 0: momentum would only smear the few steps of a task.
ADAM_BETAS = (0.0, 0.999)
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class InnerConfig:
    """How one task is learnt: `steps` mini-batch steps of `optimizer` with learning rate `lr`."""

    steps: int
    batch_size: int
    lr: float
    optimizer: InnerOptimizer = "sgd"


def minibatch_indices(num_points: int, steps: int, batch_size: int, seed: int) -> Tensor:
    """Indices of the mini-batch of each step, shape (steps, batch_size).

    Walks through shuffled epochs of the task's points, as the paper's inner loop does; the
    order comes from the task's seed, so every worker draws the same batches.
    """
    generator = torch.Generator().manual_seed(seed)
    epochs = math.ceil(steps * batch_size / num_points)
    order = torch.cat([torch.randperm(num_points, generator=generator) for _ in range(epochs)])
    return order[: steps * batch_size].view(steps, batch_size)


def full_batches(num_points: int, steps: int) -> Tensor:
    """Every point in every step, shape (steps, num_points): the adaptation of a few shots."""
    return torch.arange(num_points).expand(steps, num_points)


def task_loss(model: nn.Module, params: Params, loss_fn: LossFn, task: Task) -> Tensor:
    """The loss of `params` on all of the task's points."""
    return loss_fn(functional_call(model, params, (task.inputs,)), task.targets)


def adapt(
    model: nn.Module,
    params: Params,
    task: Task,
    *,
    loss_fn: LossFn,
    batches: Tensor,
    lr: float,
    optimizer: InnerOptimizer,
) -> Params:
    """Run one inner step per row of `batches` (indices into the task) and return the new weights.

    `model` only supplies the architecture; `params` are not modified.
    """

    def batch_loss(p: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss_fn(functional_call(model, p, (x,)), y)

    gradient = grad(batch_loss)
    weights = {name: t.detach() for name, t in params.items()}
    first = {name: torch.zeros_like(t) for name, t in weights.items()}
    second = {name: torch.zeros_like(t) for name, t in weights.items()}
    for step, indices in enumerate(batches, start=1):
        g = gradient(weights, task.inputs[indices], task.targets[indices])
        if optimizer == "sgd":
            weights = {n: w - lr * g[n] for n, w in weights.items()}
            continue
        beta1, beta2 = ADAM_BETAS
        first = {n: beta1 * m + (1 - beta1) * g[n] for n, m in first.items()}
        second = {n: beta2 * v + (1 - beta2) * g[n] ** 2 for n, v in second.items()}
        step_size = lr / (1 - beta1**step)
        correction2 = math.sqrt(1 - beta2**step)
        weights = {
            n: w - step_size * first[n] / (second[n].sqrt() / correction2 + ADAM_EPS)
            for n, w in weights.items()
        }
    return weights


@dataclass(frozen=True)
class ChunkResult:
    """What a worker returns for a chunk of tasks: Σ(W_i − φ), the count, per-task losses."""

    delta_sum: Params
    count: int
    loss_before: Tensor  # (count,) loss of φ on each task
    loss_after: Tensor  # (count,) loss of W_i on each task


def run_tasks(
    family: TaskFamily, model: nn.Module, phi: Params, seeds: list[int], inner: InnerConfig
) -> ChunkResult:
    """Adapt φ to each task of `seeds` in turn and sum the weight changes in seed order."""
    deltas, before, after = [], [], []
    with torch.no_grad():
        for seed in seeds:
            task = family.sample_task(seed)
            batches = minibatch_indices(len(task.inputs), inner.steps, inner.batch_size, seed)
            weights = adapt(
                model,
                phi,
                task,
                loss_fn=family.loss,
                batches=batches,
                lr=inner.lr,
                optimizer=inner.optimizer,
            )
            deltas.append(subtract(weights, phi))
            before.append(task_loss(model, phi, family.loss, task))
            after.append(task_loss(model, weights, family.loss, task))
    return ChunkResult(
        delta_sum=total(deltas),
        count=len(seeds),
        loss_before=torch.stack(before),
        loss_after=torch.stack(after),
    )
