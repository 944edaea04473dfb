"""Whole meta-training rounds in one process, the meta-update included: what one actor runs
when a job's rounds are too small to be worth splitting over several (`in_actor` execution).

The rounds are the controller's rounds exactly: the same task seeds per (job seed, round), the
same chunk of the job's algorithm (`reptile.algorithms.run_chunk`) over all of a round's tasks
and the same `meta_update`, so φ comes out equal to the serial reference's and to the rounds
split over actors.
"""

import time
from dataclasses import dataclass

import torch
from torch import nn

from reptile.algorithms import run_chunk
from reptile.inner import InnerStep
from reptile.meta import MetaConfig, MetaOptimizer, meta_update
from reptile.tasks import TaskFamily, task_seeds


@dataclass(frozen=True)
class RoundsResult:
    """Per-round numbers of rounds `start` … `start + completed − 1`."""

    completed: int  # rounds completed (fewer than asked when one diverged)
    diverged: bool  # the next round's update was not finite: φ is that of the last completed
    loss_before: torch.Tensor  # (completed, meta_batch_size)
    loss_after: torch.Tensor  # (completed, meta_batch_size)
    epsilons: list[float]
    compute_seconds: list[float]  # each round's inner loops and update


def run_rounds(
    family: TaskFamily,
    model: nn.Module,
    meta: MetaOptimizer,
    config: MetaConfig,
    seed: int,
    rounds: range,
    device: torch.device | str = "cpu",
    step: InnerStep | None = None,
) -> RoundsResult:
    """Run `rounds` (round indices) of the job of `seed` from `meta`'s φ, updating `meta`."""
    before, after, epsilons, seconds = [], [], [], []
    diverged = False
    for round_index in rounds:
        started = time.perf_counter()
        seeds = task_seeds(seed, round_index, config.meta_batch_size)
        result = run_chunk(
            config.algorithm, family, model, meta.phi, seeds, config.inner, device, step
        )
        eps = meta_update(
            meta, result.delta_sum, result.count, result.loss_after, round_index, config
        )
        if eps is None:
            diverged = True
            break
        before.append(result.loss_before.cpu())
        after.append(result.loss_after.cpu())
        epsilons.append(eps)
        seconds.append(time.perf_counter() - started)
    empty = torch.empty(0, config.meta_batch_size)
    return RoundsResult(
        completed=len(epsilons),
        diverged=diverged,
        loss_before=torch.stack(before) if before else empty,
        loss_after=torch.stack(after) if after else empty,
        epsilons=epsilons,
        compute_seconds=seconds,
    )
