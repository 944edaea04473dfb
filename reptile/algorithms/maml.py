"""MAML (Finn et al. 2017): g_i = ∇φ L_query(W_k(φ)), the gradient of the task's query loss
after k inner steps with respect to φ, through the inner loop (second order).

A training task's query set is its tail, the last `tail_shots` examples of each class
(`TaskFamily.tail_indices`, as FOMAML's `--foml-tail`): the k inner mini-batches are drawn from
the other examples, so the query is never trained on. The inner loop is `reptile.inner`'s own
step (SGD or Adam with β1 = 0, pure tensor arithmetic) over a `torch.func` gradient, and the
outer `torch.func.grad` differentiates through all k steps. d_i = −g_i is a gradient, not a
displacement like Reptile's: its scale is that of the loss, so outer_lr means a gradient step
(MAML's own outer Adam, 0.001, is a fair start).

Memory: the graph of all k steps of a task is held until its gradient is taken: one task at a
time where the family loops over its tasks (Conv4), the whole chunk where it stacks them (the
sine MLP). The job spec bounds both (`maml_graph`).
"""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import grad

from reptile.gradients import BatchLoss, batch_loss, batched_loss, loss_gradient
from reptile.inner import (
    ChunkResult,
    InnerConfig,
    InnerStep,
    adam_correction,
    chunk_result,
    chunk_tasks,
    descend,
    gather,
    inner_update,
    make_step,
    stacked_copies,
    step_batches,
)
from reptile.params import Params
from reptile.tasks.base import Task, TaskFamily, split_tail


def _query_loss(
    step: InnerStep,
    loss: BatchLoss,
    start: Params,
    batches: Sequence[tuple[Tensor, Tensor]],
    query: tuple[Tensor, Tensor],
) -> tuple[Tensor, tuple[Params, Tensor]]:
    """The (summed) query loss after the inner loop from `start`, and, as aux, the final
    weights and the first step's losses: what `grad` differentiates."""
    final, losses = descend(step, start, batches)
    return loss(final, *query).sum(), (final, losses[0])


class MAML:
    def run_chunk(
        self,
        family: TaskFamily,
        model: nn.Module,
        phi: Params,
        seeds: list[int],
        config: InnerConfig,
        tail_shots: int,
        device: torch.device | str,
        step: InnerStep | None,
    ) -> ChunkResult:
        """The worker's (possibly compiled) `step` is not used: MAML differentiates its own."""
        if not tail_shots:
            raise ValueError("MAML needs a query set: tail_shots ≥ 1")
        chunk = chunk_tasks(family, model, phi, seeds, config, device, tail_shots)
        assert chunk.tail is not None
        loss = batched_loss(family, model)
        inner = make_step(loss_gradient(loss, traced=True), config)
        outer = grad(_query_loss, argnums=2, has_aux=True)
        if family.batching == "loop":  # one task's graph at a time
            grads, final, before = [], [], []
            for task, (x, y) in enumerate(zip(chunk.inputs, chunk.targets, strict=True)):
                batches = [(x[b[task]], y[b[task]]) for b in chunk.batches]
                query = (x[chunk.tail[task]], y[chunk.tail[task]])
                g, (w, first) = outer(inner, loss, chunk.phi, batches, query)
                grads.append(g)
                final.append(w)
                before.append(first)
            stacked = {n: torch.stack([g[n] for g in grads]) for n in chunk.phi}
            weights = {n: torch.stack([w[n] for w in final]) for n in chunk.phi}
            loss_before = torch.stack(before)
        else:  # every task's own copy of φ: the gradient for each copy is that task's g_i
            batches = [(gather(chunk.inputs, b), gather(chunk.targets, b)) for b in chunk.batches]
            query = (gather(chunk.inputs, chunk.tail), gather(chunk.targets, chunk.tail))
            start = stacked_copies(chunk.phi, len(seeds))
            stacked, (weights, loss_before) = outer(inner, loss, start, batches, query)
        directions = {n: -g for n, g in stacked.items()}
        return chunk_result(family, model, chunk, weights, loss_before, directions)

    def serial_direction(
        self,
        family: TaskFamily,
        model: nn.Module,
        phi: Params,
        task: Task,
        seed: int,
        config: InnerConfig,
        tail_shots: int,
    ) -> Params:
        """Plain autograd through the k steps (`create_graph`), one task's weights at a time;
        the update rule is the inner loop's `inner_update` (`torch.optim` cannot be
        differentiated through)."""
        pool, tail = split_tail(family, len(task.inputs), tail_shots)
        loss = batch_loss(model, family.loss)
        start = {name: t.detach().requires_grad_() for name, t in phi.items()}
        weights = dict(start)
        second_moment = {name: torch.zeros_like(t) for name, t in phi.items()}
        for number, batch in enumerate(step_batches(config, len(pool), seed), start=1):
            points = pool[batch]
            batch_loss_value = loss(weights, task.inputs[points], task.targets[points])
            grads = torch.autograd.grad(batch_loss_value, list(weights.values()), create_graph=True)
            weights, second_moment = inner_update(
                weights,
                dict(zip(weights, grads, strict=True)),
                second_moment,
                adam_correction(number),
                config,
            )
        query = loss(weights, task.inputs[tail], task.targets[tail])
        grads = torch.autograd.grad(query, list(start.values()))
        return {name: -g for name, g in zip(start, grads, strict=True)}


SECOND_ORDER_MAML = MAML()
