"""What an algorithm is here: a map from (φ, task) to a per-task meta-gradient estimate g_i.

Every algorithm runs the same inner loop (`reptile.inner`) and hands the same meta-update
(`reptile.meta.meta_update`) the sum over a chunk's tasks. One sign convention throughout: a
chunk returns Σ_i d_i with d_i = −g_i, the direction φ moves in (for Reptile W_i − φ, the
paper's own form), and the meta-update steps along its mean; `reptile.meta` says so once.

Each algorithm gives the service's chunk (`run_chunk`, vectorised as the family batches its
tasks) and a plain per-task reference (`serial_direction`, no vectorisation, for
`reptile.serial`): the tests hold the first to the second.
"""

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from reptile.inner import ChunkResult, InnerConfig, InnerStep
from reptile.params import Params
from reptile.tasks.base import Task, TaskFamily

AlgorithmName = Literal["reptile", "fomaml", "maml"]


@dataclass(frozen=True)
class AlgorithmConfig:
    """Which algorithm turns a training task into g_i, and what it holds out of the inner loop:
    the last `tail_shots` examples of each class of a task (0: none; `TaskFamily.tail_indices`),
    FOMAML's final mini-batch (the paper's `--foml-tail`) or MAML's query set."""

    name: AlgorithmName = "reptile"
    tail_shots: int = 0


DEFAULT_ALGORITHM = AlgorithmConfig()  # Reptile, every example trained on


class Algorithm(Protocol):
    """One meta-learning algorithm: a module of `reptile.algorithms` and a line in its registry."""

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
        """Σ_i d_i over the tasks of `seeds` and their losses, on `device` (`model` there too);
        `step`: a worker's `batched_step` of `config`, where the algorithm can use it."""
        ...

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
        """d_i of one task (of `seed`), written as plainly as possible; `model` may be changed."""
        ...
