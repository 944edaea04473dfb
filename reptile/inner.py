"""The inner loop: k steps of SGD or Adam from the meta-weights φ, for one task or many at once.

Written functionally over a `Params` dict (`torch.func.functional_call`), so φ is never mutated.
`adapt` runs one task (evaluation, adaptation); `adapt_tasks` runs a whole chunk of tasks at
once: the tasks of a family share their shapes, so their points, mini-batches and weights stack
along a leading task dimension, and each inner step is one batched forward and backward pass.
Both run the same loop (`descend`): per step, one gradient (autograd on the summed loss: tasks
are independent, so each gets its own gradient; or the family's, written out) and one update
rule (`inner_update`). Optimiser state (Adam's moments) starts from zero for every task and
never carries over.

`run_tasks`, what a worker runs, batches a chunk's tasks as its family says (`batching`):
- "stacked": the model's layers take weights stacked over tasks themselves (the sine MLP: one
  `baddbmm` per layer; per-op overhead dominates such a tiny model, and `vmap`'s added ~1.5×),
  and the family writes out the gradient (`TaskFamily.stacked_gradient`: autograd's bookkeeping
  cost a third of each step);
- "vmap": `torch.func.vmap` of the one-task loss over the tasks, for any model;
- "loop": `descend` task after task (Conv4: `vmap`'s batching rules for convolution, batch norm
  and max-pooling copy the stacked activations and ran 2× slower than a loop over tasks on CPU).
`python -m bench.throughput` measures each family's modes side by side.
"""

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from reptile.params import Params
from reptile.tasks.base import Batching, Gradient, Task, TaskFamily

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
    compile: bool = False  # torch.compile the step: the same weights (allclose), faster rounds


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


def autograd_gradient(
    loss: BatchLoss, weights: Params, inputs: Tensor, targets: Tensor
) -> tuple[Params, Tensor]:
    """The gradient of the summed loss with respect to `weights` (left untouched), and the loss.

    For a per-task loss over weights stacked per task, each task's loss depends on its own
    weights only: the result is every task's own gradient, stacked, and the (tasks,) losses.
    Plain autograd, which also works under an outer `no_grad`: on the sine MLP's small tensors
    `torch.func.grad`'s wrapping of every op cost 1.3–1.5× the whole step (`traced_gradient`
    is for `torch.compile`, which breaks its graph at `autograd.grad`).
    """
    with torch.enable_grad():
        leaves = {name: w.detach().requires_grad_() for name, w in weights.items()}
        losses = loss(leaves, inputs, targets)
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
    return dict(zip(leaves, grads, strict=True)), losses.detach()


def traced_gradient(
    loss: BatchLoss, weights: Params, inputs: Tensor, targets: Tensor
) -> tuple[Params, Tensor]:
    """`autograd_gradient` through `torch.func.grad_and_value`, which `torch.compile` traces
    whole."""

    def summed(w: Params) -> tuple[Tensor, Tensor]:
        losses = loss(w, inputs, targets)
        return losses.sum(), losses.detach()

    grads, (_, losses) = grad_and_value(summed, has_aux=True)(weights)
    return grads, losses


def loss_gradient(loss: BatchLoss, *, traced: bool = False) -> Gradient:
    """The `Gradient` of `loss` by autograd; `traced`, one that `torch.compile` traces whole."""
    return partial(traced_gradient if traced else autograd_gradient, loss)


def adam_correction(step: int) -> float:
    """Adam's bias correction of the second moment after `step` steps (counted from 1)."""
    return math.sqrt(1 - ADAM_BETA2**step)


def inner_update(
    weights: Params,
    grads: Params,
    second_moment: Params,
    correction: float,
    *,
    lr: float,
    optimizer: InnerOptimizer,
) -> tuple[Params, Params]:
    """One SGD or Adam step (`correction`: `adam_correction` of the step's number); returns the
    new weights and second moment.

    The same arithmetic as `torch.optim.SGD` / `torch.optim.Adam(betas=(0, ADAM_BETA2))`,
    elementwise, so it serves one task's weights and weights stacked over tasks alike.
    """
    if optimizer == "sgd":
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


def make_step(gradient: Gradient, *, lr: float, optimizer: InnerOptimizer) -> InnerStep:
    """One inner step as a pure function of tensors: what `descend` repeats, and what a worker
    hands to `torch.compile` (`chunk_step`), which fuses its forward, backward and update."""

    def step(
        weights: Params, second_moment: Params, inputs: Tensor, targets: Tensor, correction: float
    ) -> tuple[Params, Params, Tensor]:
        grads, losses = gradient(weights, inputs, targets)
        weights, second_moment = inner_update(
            weights, grads, second_moment, correction, lr=lr, optimizer=optimizer
        )
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
    *,
    loss_fn: LossFn,
    batches: Tensor,
    lr: float,
    optimizer: InnerOptimizer,
) -> Params:
    """Run one inner step per row of `batches` (indices into the task) and return the new weights.

    `model` only supplies the architecture; `params` are not modified.
    """
    weights, _ = descend(
        make_step(loss_gradient(batch_loss(model, loss_fn)), lr=lr, optimizer=optimizer),
        {name: t.detach() for name, t in params.items()},
        ((task.inputs[indices], task.targets[indices]) for indices in batches),
    )
    return weights


def tasks_loss(model: nn.Module, loss_fn: LossFn, batching: Batching) -> BatchLoss:
    """The (tasks,) losses of weights stacked over tasks, on inputs and targets stacked alike.

    "stacked": the model takes stacked weights itself (`reptile.models.StackableLinear`) and the
    family's loss reduces each task's points alone, so no `vmap` at all; "vmap": the whole
    forward pass and loss are `vmap`ped over the tasks.
    """
    if batching == "stacked":
        return batch_loss(model, loss_fn)
    if batching == "vmap":
        return vmap(batch_loss(model, loss_fn))
    raise ValueError(f"{batching!r} runs task by task: there is no loss over stacked tasks")


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


def chunk_loss(family: TaskFamily, model: nn.Module) -> BatchLoss:
    """The loss `run_tasks` trains and scores with: one task's, or per task over stacked tasks."""
    if family.batching == "loop":
        return batch_loss(model, family.loss)
    return tasks_loss(model, family.loss, family.batching)


def chunk_gradient(family: TaskFamily, model: nn.Module, *, traced: bool = False) -> Gradient:
    """The gradient `run_tasks` steps with: the family's own over stacked tasks ("stacked"),
    else autograd's of `chunk_loss` (`traced`: one that `torch.compile` traces whole)."""
    if family.batching == "stacked":
        return family.stacked_gradient
    return loss_gradient(chunk_loss(family, model), traced=traced)


def chunk_step(family: TaskFamily, model: nn.Module, inner: InnerConfig) -> InnerStep:
    """The inner step of `run_tasks`, compiled when `inner.compile` asks for it.

    A compiled step compiles on its first call (seconds: the price of fusing the step's small
    ops into a few kernels) and is reused for every later chunk, of any number of tasks
    (`dynamic=True`; torch specialises size 1, so a one-task chunk compiles once more), so
    build it once per worker and pass it to `run_tasks`.
    """
    step = make_step(
        chunk_gradient(family, model, traced=inner.compile), lr=inner.lr, optimizer=inner.optimizer
    )
    return torch.compile(step, dynamic=True) if inner.compile else step


@dataclass(frozen=True)
class ChunkResult:
    """What a worker returns for a chunk of tasks: Σ(W_i − φ), the count, per-task losses.

    The losses are on each task's first inner mini-batch: φ's comes free with the first inner
    step, and W_i's costs one forward pass (scoring all of a task's points cost up to 3 steps).
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
    inner: InnerConfig,
    device: torch.device | str = "cpu",
    step: InnerStep | None = None,
) -> ChunkResult:
    """Adapt φ to all tasks of `seeds`; returns Σ_i (W_i − φ) and per-task losses, on `device`.

    The tasks are rebuilt from their seeds (on the CPU) and stacked in seed order, so the losses
    come back in seed order and the same chunk always sums its deltas the same way; tasks and φ
    then move to `device`, where everything else runs. `family.batching` says how: all tasks in
    one batched inner loop (`adapt_tasks`, "stacked" or "vmap"), or task after task ("loop").
    `model` must already be on `device`; `step` defaults to a new `chunk_step`.
    """
    if inner.steps < 1:
        raise ValueError(f"an inner loop needs at least one step, got {inner.steps}")
    tasks = family.sample_tasks(seeds)
    inputs = tasks.inputs.to(device)  # (tasks, n, *input_shape)
    targets = tasks.targets.to(device)  # (tasks, n, *target_shape)
    points = inputs.shape[1]
    batches = torch.stack(
        [minibatch_indices(points, inner.steps, inner.batch_size, seed) for seed in seeds]
    ).to(device)  # (tasks, steps, batch)
    first = batches[:, 0]  # (tasks, batch): where φ and W_i are scored
    # in the model's order: a compiled step is specialised to the order of its dict's keys
    phi = {name: phi[name].to(device) for name, _ in model.named_parameters()}
    loss = chunk_loss(family, model)
    step = step or chunk_step(family, model, inner)
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
