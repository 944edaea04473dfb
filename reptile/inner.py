"""The inner loop: k steps of SGD or Adam from the meta-weights φ, for one task or many at once.

One `InnerConfig` says how a task is learnt, wherever φ adapts: a training task of a round
(`run_tasks`, on the workers), a held-out task (`reptile.evaluate`), a user's task (an
adaptation, a registered model's prediction). `adapt` runs one task; `adapt_tasks` runs a whole
chunk of tasks at once: the tasks of a family share their shapes, so their points, mini-batches
and weights stack along a leading task dimension, and each inner step is one batched forward and
backward pass. Both run the same loop (`descend`): per step, one gradient (`reptile.gradients`)
and one update rule (`inner_update`, reading the config's lr and optimiser). Optimiser state
(Adam's moments) starts from zero for every task and never carries over.

A worker's chunk of tasks (`chunk_tasks`, `adapt_chunk`; `run_tasks` is Reptile's, the other
algorithms are in `reptile.algorithms`) batches its tasks as the family says (`batching`):
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
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from reptile.gradients import LossFn, batch_loss, batched_gradient, batched_loss, loss_gradient
from reptile.params import Params
from reptile.tasks.base import Gradient, Task, TaskFamily, split_tail

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


def descend_last(
    step: InnerStep, weights: Params, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[Params, Params, list[Tensor]]:
    """The weights before the `trajectory`'s last step and after it, and each step's loss (the
    first one scores φ for free: a step computes it anyway). FOMAML's update is the last step."""
    previous, losses = weights, []
    for after, step_losses in trajectory(step, weights, batches):
        previous, weights = weights, after
        losses.append(step_losses)
    return previous, weights, losses


def descend(
    step: InnerStep, weights: Params, batches: Iterable[tuple[Tensor, Tensor]]
) -> tuple[Params, list[Tensor]]:
    """The final weights of the `trajectory`, and each step's loss (`descend_last`)."""
    _, weights, losses = descend_last(step, weights, batches)
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
    """What a worker returns for a chunk of tasks: Σ_i d_i, the count, per-task losses.

    d_i = −g_i is task i's meta-direction, the negative of its meta-gradient estimate g_i
    (`reptile.meta`): for Reptile W_i − φ, hence the name `delta_sum`.

    The losses are on each task's first inner mini-batch: φ's comes free with the first inner
    step, and W_i's costs one forward pass (less than scoring all of a task's points).
    """

    delta_sum: Params
    count: int
    loss_before: Tensor  # (count,) loss of φ on each task's first mini-batch
    loss_after: Tensor  # (count,) loss of W_i on the same mini-batch


@dataclass(frozen=True)
class ChunkTasks:
    """A chunk's tasks on the device, in seed order, and the points of each inner step."""

    inputs: Tensor  # (tasks, n, *input_shape)
    targets: Tensor  # (tasks, n, *target_shape)
    batches: list[Tensor]  # per inner step, (tasks, batch) indices of its points
    phi: Params  # on the device, in the model's order (a compiled step is specialised to it)
    tail: Tensor | None = None  # (tasks, m) indices of the points held out of the inner loop

    def with_tail_step(self) -> "ChunkTasks":
        """The same chunk with one more inner step, on every task's tail."""
        if self.tail is None:
            raise ValueError("this chunk holds no tail out of its inner loop")
        return ChunkTasks(
            self.inputs, self.targets, [*self.batches, self.tail], self.phi, self.tail
        )


def chunk_tasks(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    config: InnerConfig,
    device: torch.device | str = "cpu",
    tail_shots: int = 0,
) -> ChunkTasks:
    """The tasks of `seeds`, rebuilt from their seeds (on the CPU) and stacked in seed order, so
    the same chunk always sums its tasks the same way, then moved to `device` with φ.

    Each task draws `config.steps` mini-batches from its points, all of them or, with
    `tail_shots`, all but its tail (`split_tail`). `model` must already be on `device`.
    """
    if config.steps < 1:
        raise ValueError(f"an inner loop needs at least one step, got {config.steps}")
    tasks = family.sample_tasks(seeds)
    inputs = tasks.inputs.to(device)  # (tasks, n, *input_shape)
    points = inputs.shape[1]
    tail = None
    if tail_shots:
        pool, held_out = split_tail(family, points, tail_shots)
        batches = pool[torch.stack([step_batches(config, len(pool), seed) for seed in seeds])]
        tail = held_out.to(device).expand(len(seeds), len(held_out))
    else:
        batches = torch.stack([step_batches(config, points, seed) for seed in seeds])
    return ChunkTasks(
        inputs=inputs,
        targets=tasks.targets.to(device),  # (tasks, n, *target_shape)
        batches=list(batches.to(device).unbind(1)),  # (tasks, steps, batch) → per step
        phi={name: phi[name].to(device) for name, _ in model.named_parameters()},
        tail=tail,
    )


@dataclass(frozen=True)
class Descent:
    """Every task's inner loop, stacked over the chunk's tasks as (tasks, *shape)."""

    previous: Params  # the weights before the last step (W_{k−1})
    final: Params  # W_i, after the last step
    losses: list[Tensor]  # per step, the (tasks,) losses of the weights it started from


def adapt_tasks(
    step: InnerStep, params: Params, inputs: Tensor, targets: Tensor, batches: Sequence[Tensor]
) -> Descent:
    """`descend_last` for many tasks at once, with a `step` over a loss from `tasks_loss`;
    returns each parameter's weights stacked as (tasks, *shape), and each step's losses.

    `inputs` (tasks, n, *input_shape) and `targets` (tasks, n, *target_shape) stack the tasks'
    points, `batches` holds each step's (tasks, batch) mini-batch indices. Every task starts
    from its own copy of φ. `params` are not modified.
    """
    previous, final, losses = descend_last(
        step,
        stacked_copies(params, len(inputs)),
        ((gather(inputs, b), gather(targets, b)) for b in batches),
    )
    return Descent(previous, final, losses)


def adapt_chunk(family: TaskFamily, step: InnerStep, chunk: ChunkTasks) -> Descent:
    """Run the inner loop of every task of `chunk` from φ, as `family.batching` says: all tasks
    in one batched loop (`adapt_tasks`, "stacked" or "vmap"), or task after task ("loop")."""
    if family.batching == "loop":
        adapted = [
            descend_last(step, chunk.phi, [(x[b[task]], y[b[task]]) for b in chunk.batches])
            for task, (x, y) in enumerate(zip(chunk.inputs, chunk.targets, strict=True))
        ]
        return Descent(
            previous={name: torch.stack([p[name] for p, _, _ in adapted]) for name in chunk.phi},
            final={name: torch.stack([w[name] for _, w, _ in adapted]) for name in chunk.phi},
            losses=[torch.stack(step) for step in zip(*(ls for _, _, ls in adapted), strict=True)],
        )
    return adapt_tasks(step, chunk.phi, chunk.inputs, chunk.targets, chunk.batches)


def chunk_losses(
    family: TaskFamily, model: nn.Module, weights: Params, chunk: ChunkTasks, indices: Tensor
) -> Tensor:
    """The (tasks,) losses of each task's `weights` (stacked over tasks) on its points
    `indices` (tasks, m), one task at a time where the family runs its tasks so."""
    loss = batched_loss(family, model)
    inputs, targets = gather(chunk.inputs, indices), gather(chunk.targets, indices)
    if family.batching != "loop":
        return loss(weights, inputs, targets)
    return torch.stack(
        [
            loss({name: w[task] for name, w in weights.items()}, inputs[task], targets[task])
            for task in range(len(indices))
        ]
    )


def run_tasks(
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    config: InnerConfig,
    device: torch.device | str = "cpu",
    step: InnerStep | None = None,
) -> ChunkResult:
    """Reptile's chunk: adapt φ to all tasks of `seeds` and return Σ_i (W_i − φ) and per-task
    losses, on `device` (`chunk_tasks`, `adapt_chunk`; `reptile.algorithms` has the others).

    `model` must already be on `device`; `step` (a `batched_step` of the same `config`, e.g.
    compiled) defaults to a new eager one.
    """
    chunk = chunk_tasks(family, model, phi, seeds, config, device)
    step = step or batched_step(family, model, config)
    with torch.no_grad():
        descent = adapt_chunk(family, step, chunk)
        final = descent.final
        return chunk_result(
            family,
            model,
            chunk,
            final,
            descent.losses[0],
            {n: final[n] - chunk.phi[n] for n in final},
        )


def chunk_result(
    family: TaskFamily,
    model: nn.Module,
    chunk: ChunkTasks,
    final: Params,
    loss_before: Tensor,
    directions: Params,
) -> ChunkResult:
    """A chunk's `ChunkResult`: each task's meta-direction d_i (stacked over tasks) summed in
    seed order, φ's losses on the first mini-batch (`loss_before`, what the first step gave),
    and those of the `final` weights W_i on the same mini-batch."""
    first = chunk.batches[0]  # (tasks, batch): where φ and W_i are scored
    with torch.no_grad():
        return ChunkResult(
            delta_sum={name: d.sum(0) for name, d in directions.items()},
            count=len(chunk.inputs),
            loss_before=loss_before,
            loss_after=chunk_losses(family, model, final, chunk, first),
        )
