"""What every task family provides, and how task seeds are derived.

A task is rebuilt from an integer seed, so only seeds ever cross process boundaries. The seeds
of a round depend on (job seed, round) alone, never on how the round is split across workers.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from reptile.params import Params

# Held-out evaluation tasks come from their own fixed stream, the same for every job, so that
# evaluation numbers of different jobs compare the same tasks.
EVAL_ENTROPY = 20180308

# How a worker runs a chunk's inner loops: all tasks at once through a model that takes weights
# stacked over tasks, all at once through `vmap`, or one task after another (reptile.inner).
Batching = Literal["stacked", "vmap", "loop"]

# (weights, inputs, targets) -> (the gradient of the summed loss for each weight, the losses)
Gradient = Callable[[Params, Tensor, Tensor], tuple[Params, Tensor]]


@dataclass(frozen=True)
class Task:
    """One task's labelled examples: what the inner loop trains on."""

    inputs: Tensor  # (n, *input_shape)
    targets: Tensor  # (n, *target_shape)

    def to(self, device: torch.device | str) -> "Task":
        return Task(self.inputs.to(device), self.targets.to(device))


@dataclass(frozen=True)
class EvalTask:
    """A held-out task: a few labelled shots to adapt on, and query points to score."""

    support: Task
    query: Task

    def to(self, device: torch.device | str) -> "EvalTask":
        return EvalTask(self.support.to(device), self.query.to(device))


def stack(tasks: list[Task]) -> Task:
    """Tasks of the same shapes as one `Task` with a leading task dimension."""
    return Task(
        inputs=torch.stack([task.inputs for task in tasks]),
        targets=torch.stack([task.targets for task in tasks]),
    )


class TaskFamily(Protocol):
    """A distribution over tasks, with the model and the loss that fit it."""

    @property
    def name(self) -> str: ...

    @property
    def batching(self) -> Batching:
        """How a chunk's inner loops run (`reptile.inner.run_tasks`): whichever is fastest for
        the family's model; every mode gives the same weights."""
        ...

    def make_model(self) -> nn.Module: ...

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        """The mean loss of one task's predictions (n, …), a scalar; with batching "stacked",
        also the (tasks,) losses of predictions and targets stacked over tasks (tasks, n, …)."""
        ...

    def stacked_gradient(
        self, weights: Params, inputs: Tensor, targets: Tensor
    ) -> tuple[Params, Tensor]:
        """With batching "stacked": each task's gradient of `loss` for weights stacked over
        tasks (tasks, …), on inputs and targets stacked alike, and the (tasks,) losses: the
        numbers autograd gives, without its per-op bookkeeping (a `Gradient`)."""
        ...

    def sample_task(self, seed: int) -> Task: ...

    def tail_indices(self, tail_shots: int) -> Tensor:
        """The indices (m,) of a training task's last `tail_shots` examples of each class (a
        sine task's points are one class): what FOMAML's last step and MAML's query hold out
        of the inner loop (`split_tail`)."""
        ...

    def sample_tasks(self, seeds: list[int]) -> Task:
        """The tasks of `seeds`, the same as `sample_task` gives, stacked along a leading task
        dimension: inputs (tasks, n, …), targets (tasks, n, …)."""
        ...

    def sample_eval_task(self, seed: int) -> EvalTask: ...


def task_seeds(job_seed: int, round_index: int, count: int) -> list[int]:
    """The seeds of the tasks of one meta-training round (independent of the number of workers)."""
    sequence = np.random.SeedSequence(entropy=job_seed, spawn_key=(round_index,))
    return [int(s) for s in sequence.generate_state(count, dtype=np.uint64)]


def eval_task_seeds(count: int) -> list[int]:
    """The seeds of the fixed held-out evaluation tasks."""
    sequence = np.random.SeedSequence(entropy=EVAL_ENTROPY)
    return [int(s) for s in sequence.generate_state(count, dtype=np.uint64)]


def split_tail(family: TaskFamily, points: int, tail_shots: int) -> tuple[Tensor, Tensor]:
    """The indices of a training task's `points` examples that its inner loop draws from, and
    those of its tail (`TaskFamily.tail_indices`), both ascending."""
    tail = family.tail_indices(tail_shots)
    held = torch.zeros(points, dtype=torch.bool)
    held[tail] = True
    return torch.nonzero(~held).flatten(), tail
