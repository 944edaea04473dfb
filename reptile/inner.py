"""The inner loop: k steps of SGD or Adam from the meta-weights φ, for one task or many at once.

One `InnerConfig` says how a task is learnt, wherever φ adapts: a training task of a round
(`run_tasks`, on the workers), a held-out task (`reptile.evaluate`), a user's task (an
adaptation, a registered model's prediction). `adapt` runs one task; `adapt_tasks` runs a whole
chunk of tasks at once: the tasks of a family share their shapes, so their points, mini-batches
and weights stack along a leading task dimension, and each inner step is one batched forward and
backward pass. Both run the same loop (`descend`): per step, one gradient (`reptile.gradients`)
and one update rule (`inner_update`, reading the config's lr and optimiser). Optimiser state
(Adam's moments) starts from zero for every task and never carries over.

`run_tasks`, what a worker runs, batches a chunk's tasks as its family says (`batching`):
- "stacked": the model's layers take weights stacked over tasks themselves (the sine MLP: one
  `baddbmm` per layer, cheaper than `vmap` on such a tiny model, where per-op overhead
  dominates), and the family writes out the gradient (`TaskFamily.stacked_gradient`, without
  autograd's bookkeeping);
- "vmap": `torch.func.vmap` of the one-task loss over the tasks, for any model;
- "loop": `descend` task after task (Conv4: `vmap`'s batching rules for convolution, batch norm
  and max-pooling copy the stacked activations, slower than a loop over tasks on CPU).
`python -m bench.throughput` measures each family's modes side by side.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from reptile.gradients import LossFn, batch_loss, batched_gradient, batched_loss, loss_gradient
from reptile.params import Params
from reptile.tasks.base import Gradient, Task, TaskFamily

InnerOptimizer = Literal["sgd", "adam"]

# The paper's inner Adam uses β1 = 0 (momentum would only smear the few steps of a task), so its
# first moment is the gradient itself and only the second moment is state.
ADAM_BETA2 = 0.999
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class InnerConfig:
    """How φ adapts to one task: `steps` steps of `optimizer` with learning rate `lr`, each on a
    mini-batch of `batch_size` of the task's points, or on all of them (None: a few shots).

    The same type for training tasks, held-out evaluation and adaptations. What does not change
    how a task is learnt stays out: whether a worker compiles its step (`batched_step`: the same
    weights, allclose), and how an adapted classifier treats batch norm (`transductive`, of
    `reptile.evaluate.classify`).
    """

    steps: int
    lr: float
    optimizer: InnerOptimizer = "sgd"
    batch_size: int | None = None


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


def step_batches(config: InnerConfig, num_points: int, seed: int) -> Tensor:
    """The (steps, batch) indices of each step's points for a task of `num_points`: the
    mini-batches of `seed`, or every point when `config.batch_size` is None."""
    if config.batch_size is None:
        return full_batches(num_points, config.steps)
    return minibatch_indices(num_points, config.steps, config.batch_size, seed)


def adam_correction(step: int) -> float:
    """Adam's bias correction of the second moment after `step` steps (counted from 1)."""
    return math.sqrt(1 - ADAM_BETA2**step)


def inner_update(
    weights: Params, grads: Params, second_moment: Params, correction: float, config: InnerConfig
) -> tuple[Params, Params]:
    """One step of `config.optimizer` with `config.lr` (`correction`: `adam_correction` of the
    step's number); returns the new weights and second moment.

    The same arithmetic as `torch.optim.SGD` / `torch.optim.Adam(betas=(0, ADAM_BETA2))`,
    elementwise, so it serves one task's weights and weights stacked over tasks alike.
    """
    lr = config.lr
    if config.optimizer == "sgd":
        return {n: torch.add(w, grads[n], alpha=-lr) for n, w in weights.items()}, second_moment
    second_moment = {
        n: torch.addcmul(v * ADAM_BETA2, grads[n], grads[n], value=1 - ADAM_BETA2)
        for n, v in second_moment.items()
    }
    weights = {
        n: torch.addcdiv(w, grads[n], second_moment[n].sqrt() / correction + ADAM_EPS, value=-lr)
        for n, w in weights.items()
    }
    return weights, second_moment


# (weights, second moment, inputs, targets, Adam correction) -> (weights, second moment, losses)
InnerStep = Callable[[Params, Params, Tensor, Tensor, float], tuple[Params, Params, Tensor]]


def make_step(gradient: Gradient, config: InnerConfig) -> InnerStep:
    """One inner step of `config` as a pure function of tensors: what `descend` repeats, and
    what a worker hands to `torch.compile` (`batched_step`), which fuses its forward, backward
    and update."""

    def step(
        weights: Params, second_moment: Params, inputs: Tensor, targets: Tensor, correction: float
    ) -> tuple[Params, Params, Tensor]:
        grads, losses = gradient(weights, inputs, targets)
        weights, second_moment = inner_update(weights, grads, second_moment, correction, config)
        return weights, second_moment, losses

    return step


def trajectory(
    step: InnerStep, weights: Params, batches: Iterable[tuple[Tensor, Tensor]]
) -> Iterator[tuple[Params, Tensor]]:
    """One inner `step` per (inputs, targets) mini-batch of `batches`, yielding the weights after
    each step and the step's loss: that of the weights it started from, on its mini-batch.

    Adam's state starts from zero here, so it never carries over from another call.
    """
    second_moment = {name: torch.zeros_like(w) for name, w in weights.items()}
    for number, (inputs, targets) in enumerate(batches, start=1):
        weights, second_moment, losses = step(
            weights, second_moment, inputs, targets, adam_correction(number)
        )
        yield weights, losses


def descend(
    step: InnerStep, weights: Params, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[Params, list[Tensor]]:
    """The final weights of the `trajectory`, and each step's loss (the first one scores φ for
    free: a step computes it anyway)."""
    losses = []
    for after, step_losses in trajectory(step, weights, batches):
        weights = after
        losses.append(step_losses)
    return weights, losses


def adapt(
    model: nn.Module,
    params: Params,
    task: Task,
    config: InnerConfig,
    *,
    loss_fn: LossFn,
    seed: int = 0,
) -> Params:
    """Adapt `params` to one task as `config` says and return the new weights (`seed` orders
    the mini-batches; with full batches it does not matter).

    `model` only supplies the architecture; `params` are not modified.
    """
    weights, _ = descend(
        make_step(loss_gradient(batch_loss(model, loss_fn)), config),
        {name: t.detach() for name, t in params.items()},
        (
            (task.inputs[indices], task.targets[indices])
            for indices in step_batches(config, len(task.inputs), seed)
        ),
    )
    return weights


def gather(stacked: Tensor, indices: Tensor) -> Tensor:
    """Rows `indices[i]` of each task's `stacked[i]`: (tasks, n, …), (tasks, b) → (tasks, b, …)."""
    rows = torch.arange(len(indices), device=indices.device).unsqueeze(1)
    return stacked[rows, indices]


def stacked_copies(params: Params, count: int) -> Params:
    """`count` copies of `params`, stacked as (count, *shape): every task's own start from φ."""
    return {name: t.detach().expand(count, *t.shape).clone() for name, t in params.items()}


def adapt_tasks(
    step: InnerStep, params: Params, inputs: Tensor, targets: Tensor, batches: Tensor
) -> tuple[Params, list[Tensor]]:
    """`descend` for many tasks at once, with a `step` over a loss from `tasks_loss`; returns
    each parameter's W_i stacked as (tasks, *shape), and each step's (tasks,) losses.

    `inputs` (tasks, n, *input_shape) and `targets` (tasks, n, *target_shape) stack the tasks'
    points, `batches` (tasks, steps, batch) their mini-batch indices. Every task starts from its
    own copy of φ. `params` are not modified.
    """
    return descend(
        step,
        stacked_copies(params, len(batches)),
        ((gather(inputs, b), gather(targets, b)) for b in batches.transpose(0, 1)),
    )


def batched_step(
    family: TaskFamily, model: nn.Module, config: InnerConfig, *, compile: bool = False
) -> InnerStep:
    """The inner step of `config` over the family's tasks as it batches them (`run_tasks`),
    compiled by `torch.compile` when `compile` asks for it.

    A compiled step compiles on its first call and is reused for every later chunk, of any
    number of tasks (`dynamic=True`; torch specialises size 1, so a one-task chunk compiles once
    more), so build it once per worker and pass it to `run_tasks`.
    """
    step = make_step(batched_gradient(family, model, traced=compile), config)
    return torch.compile(step, dynamic=True) if compile else step


@dataclass(frozen=True)
class ChunkResult:
    """What a worker returns for a chunk of tasks: Σ(W_i − φ), the count, per-task losses.

    The losses are on each task's first inner mini-batch: φ's comes free with the first inner
    step, and W_i's costs one forward pass (less than scoring all of a task's points).
    """

    delta_sum: Params
    count: int
    loss_before: Tensor  # (count,) loss of φ on each task's first mini-batch
    loss_after: Tensor  # (count,) loss of W_i on the same mini-batch


def run_tasks(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    config: InnerConfig,
    device: torch.device | str = "cpu",
    step: InnerStep | None = None,
) -> ChunkResult:
    """Adapt φ to all tasks of `seeds`; returns Σ_i (W_i − φ) and per-task losses, on `device`.

    The tasks are rebuilt from their seeds (on the CPU) and stacked in seed order, so the losses
    come back in seed order and the same chunk always sums its deltas the same way; tasks and φ
    then move to `device`, where everything else runs. `family.batching` says how: all tasks in
    one batched inner loop (`adapt_tasks`, "stacked" or "vmap"), or task after task ("loop").
    `model` must already be on `device`; `step` (a `batched_step` of the same `config`, e.g.
    compiled) defaults to a new eager one.
    """
    if config.steps < 1:
        raise ValueError(f"an inner loop needs at least one step, got {config.steps}")
    tasks = family.sample_tasks(seeds)
    inputs = tasks.inputs.to(device)  # (tasks, n, *input_shape)
    targets = tasks.targets.to(device)  # (tasks, n, *target_shape)
    points = inputs.shape[1]
    batches = torch.stack([step_batches(config, points, seed) for seed in seeds]).to(
        device
    )  # (tasks, steps, batch)
    first = batches[:, 0]  # (tasks, batch): where φ and W_i are scored
    # in the model's order: a compiled step is specialised to the order of its dict's keys
    phi = {name: phi[name].to(device) for name, _ in model.named_parameters()}
    loss = batched_loss(family, model)
    step = step or batched_step(family, model, config)
    with torch.no_grad():
        if family.batching == "loop":
            adapted = [
                descend(step, phi, zip(x[b], y[b], strict=True))
                for x, y, b in zip(inputs, targets, batches, strict=True)
            ]
            weights = {name: torch.stack([w[name] for w, _ in adapted]) for name in phi}
            loss_before = torch.stack([losses[0] for _, losses in adapted])
            loss_after = torch.stack(
                [
                    loss(w, x[b], y[b])
                    for (w, _), x, y, b in zip(adapted, inputs, targets, first, strict=True)
                ]
            )
        else:
            weights, losses = adapt_tasks(step, phi, inputs, targets, batches)
            loss_before = losses[0]
            loss_after = loss(weights, gather(inputs, first), gather(targets, first))
        return ChunkResult(
            delta_sum={name: (weights[name] - phi[name]).sum(0) for name in phi},
            count=len(seeds),
            loss_before=loss_before,
            loss_after=loss_after,
        )
