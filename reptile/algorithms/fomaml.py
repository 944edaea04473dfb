"""First-order MAML as the paper's code runs it (openai/supervised-reptile, `reptile.py` class
`FOML`, flags `--foml --foml-tail N`).

The update direction is the inner loop's last step, d_i = W_k − W_{k−1}: with SGD, −lr times
the gradient of the last mini-batch's loss at W_{k−1}, the weights the last step starts from;
with Adam, Adam's step (its state carried over the task's earlier steps, as there). The paper's
two ways of drawing the batches:
- no tail (`tail_shots` 0): k mini-batches drawn like Reptile's, so the last may overlap the
  others (`FOML` without `tail_shots`);
- a tail of `tail_shots` examples per class: k − 1 mini-batches from the rest, then one step
  on the whole tail (`FOML._mini_batches`: `inner_iters - 1` batches, then `yield tail`), which
  needs k ≥ 2 here. The paper's tail is each class's first examples, ours its last: the examples
  of a class are drawn at random, so either is a random held-out set.
"""

from dataclasses import replace

import torch
from torch import Tensor, nn

from reptile.algorithms.reptile import inner_optimizer
from reptile.inner import (
    ChunkResult,
    InnerConfig,
    InnerStep,
    adapt_chunk,
    batched_step,
    chunk_result,
    chunk_tasks,
    step_batches,
)
from reptile.params import Params, params_of, subtract
from reptile.tasks.base import Task, TaskFamily, split_tail


def _leading(config: InnerConfig, tail_shots: int) -> InnerConfig:
    """The mini-batch steps before the tail's (all k of them without a tail)."""
    if not tail_shots:
        return config
    if config.steps < 2:
        raise ValueError("FOMAML with tail_shots needs inner_steps ≥ 2: k − 1 steps, then the tail")
    return replace(config, steps=config.steps - 1)


class FOMAML:
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
        chunk = chunk_tasks(
            family, model, phi, seeds, _leading(config, tail_shots), device, tail_shots
        )
        if tail_shots:
            chunk = chunk.with_tail_step()
        step = step or batched_step(family, model, config)
        with torch.no_grad():
            descent = adapt_chunk(family, step, chunk)
            last = {n: descent.final[n] - descent.previous[n] for n in descent.final}
            return chunk_result(family, model, chunk, descent.final, descent.losses[0], last)

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
        """An `nn.Module` and a fresh `torch.optim` optimiser, as Reptile's; the weights before
        the last step kept: W_k − W_{k−1}."""
        points = len(task.inputs)
        leading = _leading(config, tail_shots)
        if tail_shots:
            pool, tail = split_tail(family, points, tail_shots)
            batches = [pool[b] for b in step_batches(leading, len(pool), seed)] + [tail]
        else:
            batches = list(step_batches(leading, points, seed))
        model.load_state_dict(phi, strict=False)
        optimizer = inner_optimizer(model, config)

        def train_on(batch: Tensor) -> None:
            optimizer.zero_grad()
            family.loss(model(task.inputs[batch]), task.targets[batch]).backward()
            optimizer.step()

        for batch in batches[:-1]:
            train_on(batch)
        before = params_of(model)
        train_on(batches[-1])
        return subtract(params_of(model), before)


FIRST_ORDER_MAML = FOMAML()
