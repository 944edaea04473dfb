"""Reptile (the paper's Algorithm 2): g_i = φ − W_i, so d_i = W_i − φ, after k inner steps.

The default algorithm; its chunk is `reptile.inner.run_tasks`, unchanged.
"""

import torch
from torch import nn

from reptile.inner import ChunkResult, InnerConfig, InnerStep, run_tasks, step_batches
from reptile.params import Params, params_of, subtract
from reptile.tasks.base import Task, TaskFamily


def inner_optimizer(model: nn.Module, config: InnerConfig) -> torch.optim.Optimizer:
    """A fresh `torch.optim` optimiser of `config` for one task (the serial references'):
    Adam with β1 = 0, as the paper's inner loop."""
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr)
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.0, 0.999))


class Reptile:
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
        if tail_shots:
            raise ValueError("Reptile trains on all of a task's examples: no tail_shots")
        return run_tasks(family, model, phi, seeds, config, device, step)

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
        """An `nn.Module` trained by a fresh `torch.optim` optimiser: W_i − φ."""
        model.load_state_dict(phi, strict=False)
        optimizer = inner_optimizer(model, config)
        for batch in step_batches(config, len(task.inputs), seed):
            optimizer.zero_grad()
            family.loss(model(task.inputs[batch]), task.targets[batch]).backward()
            optimizer.step()
        return subtract(params_of(model), phi)


REPTILE = Reptile()
