"""The inner loop: k steps of SGD or Adam from the meta-weights φ, for one task or many at once.

Written functionally over a `Params` dict (`torch.func.functional_call`), so φ is never mutated.
`adapt` runs one task (evaluation, adaptation); `adapt_tasks` runs a whole chunk of tasks at
once: the tasks of a family share their shapes, so their points and mini-batches stack along a
leading task dimension, the loss is `vmap`ped over it, and each inner step is one batched
forward and backward pass, whatever the model. Both run the same loop (`descend`): per step, one
gradient (autograd on the summed loss: tasks are independent, so each gets its own gradient) and
one update rule (`inner_update`). Optimiser state (Adam's moments) starts from zero for every
task and never carries over.

`run_tasks`, what a worker runs, uses `adapt_tasks` for the families that ask for it
(`vmap_tasks`: the sine MLP, where per-task Python overhead is most of the time) and `descend`
task after task for the others (Conv4: `vmap`'s batching rules for convolution, batch norm and
max-pooling over a task dimension copy the stacked activations and ran 2× slower than a loop
over tasks on CPU, bench/throughput.py).
"""

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from reptile.params import Params
from reptile.tasks.base import Task, TaskFamily

InnerOptimizer = Literal["sgd", "adam"]
LossFn = Callable[[Tensor, Tensor], Tensor]
BatchLoss = Callable[[Params, Tensor, Tensor], Tensor]  # (params, inputs, targets) -> loss(es)

# The paper's inner Adam uses β1 = 0 (momentum would only smear the few steps of a task), so its
# first moment is the gradient itself and only the second moment is state.
ADAM_BETA2 = 0.999
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


def batch_loss(model: nn.Module, loss_fn: LossFn) -> BatchLoss:
    """The loss as a pure function of (params, inputs, targets), ready for `vmap`."""

    def loss(params: Params, inputs: Tensor, targets: Tensor) -> Tensor:
        return loss_fn(functional_call(model, params, (inputs,)), targets)

    return loss


def task_loss(model: nn.Module, params: Params, loss_fn: LossFn, task: Task) -> Tensor:
    """The loss of `params` on all of the task's points."""
    return batch_loss(model, loss_fn)(params, task.inputs, task.targets)


def gradient(loss: BatchLoss, weights: Params, inputs: Tensor, targets: Tensor) -> Params:
    """The gradient of the summed loss with respect to `weights` (left untouched).

    For a loss `vmap`ped over tasks, whose weights are stacked per task, each task's loss
    depends on its own weights only: the result is every task's own gradient, stacked.
    """
    leaves = {name: w.detach().requires_grad_() for name, w in weights.items()}
    with torch.enable_grad():  # callers may hold no_grad; the inner loop needs its gradients
        total = loss(leaves, inputs, targets).sum()
        grads = torch.autograd.grad(total, list(leaves.values()))
    return dict(zip(leaves, grads, strict=True))


def inner_update(
    weights: Params,
    grads: Params,
    second_moment: Params,
    step: int,
    *,
    lr: float,
    optimizer: InnerOptimizer,
) -> tuple[Params, Params]:
    """One SGD or Adam step (`step` counts from 1); returns the new weights and second moment.

    The same arithmetic as `torch.optim.SGD` / `torch.optim.Adam(betas=(0, ADAM_BETA2))`,
    elementwise, so it serves one task's weights and weights stacked over tasks alike.
    """
    if optimizer == "sgd":
        return {n: torch.add(w, grads[n], alpha=-lr) for n, w in weights.items()}, second_moment
    second_moment = {
        n: torch.addcmul(v * ADAM_BETA2, grads[n], grads[n], value=1 - ADAM_BETA2)
        for n, v in second_moment.items()
    }
    correction = math.sqrt(1 - ADAM_BETA2**step)
    weights = {
        n: torch.addcdiv(w, grads[n], second_moment[n].sqrt() / correction + ADAM_EPS, value=-lr)
        for n, w in weights.items()
    }
    return weights, second_moment


def descend(
    loss: BatchLoss,
    weights: Params,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    lr: float,
    optimizer: InnerOptimizer,
) -> Params:
    """One inner step per (inputs, targets) mini-batch of `batches`; returns the final weights.

    Adam's state starts from zero here, so it never carries over from another call.
    """
    second_moment = {name: torch.zeros_like(w) for name, w in weights.items()}
    for step, (inputs, targets) in enumerate(batches, start=1):
        grads = gradient(loss, weights, inputs, targets)
        weights, second_moment = inner_update(
            weights, grads, second_moment, step, lr=lr, optimizer=optimizer
        )
    return weights


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
    return descend(
        batch_loss(model, loss_fn),
        {name: t.detach() for name, t in params.items()},
        ((task.inputs[indices], task.targets[indices]) for indices in batches),
        lr=lr,
        optimizer=optimizer,
    )


def adapt_tasks(
    model: nn.Module,
    params: Params,
    inputs: Tensor,
    targets: Tensor,
    *,
    loss_fn: LossFn,
    batches: Tensor,
    lr: float,
    optimizer: InnerOptimizer,
) -> Params:
    """`adapt` for many tasks at once; returns each parameter's W_i stacked as (tasks, *shape).

    `inputs` (tasks, n, *input_shape) and `targets` (tasks, n, *target_shape) stack the tasks'
    points, `batches` (tasks, steps, batch) their mini-batch indices. Every task starts from φ
    broadcast over the task dimension (a view, not copies). `params` are not modified.
    """
    count = len(batches)
    # (tasks, 1): each task's mini-batch from its points
    rows = torch.arange(count, device=batches.device).unsqueeze(1)
    return descend(
        vmap(batch_loss(model, loss_fn)),
        {name: t.detach().expand(count, *t.shape) for name, t in params.items()},
        ((inputs[rows, indices], targets[rows, indices]) for indices in batches.transpose(0, 1)),
        lr=lr,
        optimizer=optimizer,
    )


@dataclass(frozen=True)
class ChunkResult:
    """What a worker returns for a chunk of tasks: Σ(W_i − φ), the count, per-task losses."""

    delta_sum: Params
    count: int
    loss_before: Tensor  # (count,) loss of φ on each task
    loss_after: Tensor  # (count,) loss of W_i on each task


def run_tasks(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    inner: InnerConfig,
    device: torch.device | str = "cpu",
) -> ChunkResult:
    """Adapt φ to all tasks of `seeds`; returns Σ_i (W_i − φ) and per-task losses, on `device`.

    The tasks are rebuilt from their seeds (on the CPU) and stacked in seed order, so the losses
    come back in seed order and the same chunk always sums its deltas the same way; tasks and φ
    then move to `device`, where everything else runs. Families whose model vectorises well
    (`family.vmap_tasks`) run one `vmap`ped inner loop over all tasks (`adapt_tasks`); the others
    run `descend` task after task on the same stacked data. `model` must already be on `device`.
    """
    tasks = [family.sample_task(seed) for seed in seeds]
    inputs = torch.stack([task.inputs for task in tasks]).to(device)  # (tasks, n, *input_shape)
    targets = torch.stack([task.targets for task in tasks]).to(device)  # (tasks, n, *target)
    batches = torch.stack(
        [
            minibatch_indices(len(task.inputs), inner.steps, inner.batch_size, seed)
            for task, seed in zip(tasks, seeds, strict=True)
        ]
    ).to(device)  # (tasks, steps, batch)
    phi = {name: t.to(device) for name, t in phi.items()}
    loss = batch_loss(model, family.loss)
    with torch.no_grad():
        if family.vmap_tasks:
            weights = adapt_tasks(
                model,
                phi,
                inputs,
                targets,
                loss_fn=family.loss,
                batches=batches,
                lr=inner.lr,
                optimizer=inner.optimizer,
            )
            loss_before = vmap(loss, in_dims=(None, 0, 0))(phi, inputs, targets)
            loss_after = vmap(loss)(weights, inputs, targets)
        else:
            adapted = [
                descend(
                    loss, phi, zip(x[b], y[b], strict=True), lr=inner.lr, optimizer=inner.optimizer
                )
                for x, y, b in zip(inputs, targets, batches, strict=True)
            ]
            weights = {name: torch.stack([w[name] for w in adapted]) for name in phi}
            loss_before = torch.stack(
                [loss(phi, x, y) for x, y in zip(inputs, targets, strict=True)]
            )
            loss_after = torch.stack(
                [loss(w, x, y) for w, x, y in zip(adapted, inputs, targets, strict=True)]
            )
        return ChunkResult(
            delta_sum={name: (weights[name] - phi[name]).sum(0) for name in phi},
            count=len(seeds),
            loss_before=loss_before,
            loss_after=loss_after,
        )
