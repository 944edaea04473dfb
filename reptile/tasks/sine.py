"""Sine-wave regression (Finn et al. 2017; Reptile paper, section 6.1).

A task is y = amplitude · sin(x + phase) with amplitude ~ U[0.1, 5], phase ~ U[0, 2π] and
inputs x ~ U[−5, 5]. Held-out tasks are scored on 50 evenly spaced points of [−5, 5], as in
the Reptile blog's example.
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from reptile.models import sine_mlp
from reptile.tasks.base import Batching, EvalTask, Task

AMPLITUDE_RANGE = (0.1, 5.0)
PHASE_RANGE = (0.0, 2 * math.pi)
X_RANGE = (-5.0, 5.0)
QUERY_POINTS = 50


@dataclass(frozen=True)
class SineWave:
    """One sine function of the family."""

    amplitude: float
    phase: float

    def __call__(self, x: Tensor) -> Tensor:
        return self.amplitude * torch.sin(x + self.phase)


def _uniform(generator: torch.Generator, low: float, high: float, shape: tuple[int, ...]) -> Tensor:
    return torch.empty(shape).uniform_(low, high, generator=generator)


def sample_wave(generator: torch.Generator) -> SineWave:
    """Draw amplitude and phase from the paper's ranges."""
    amplitude = _uniform(generator, *AMPLITUDE_RANGE, ()).item()
    phase = _uniform(generator, *PHASE_RANGE, ()).item()
    return SineWave(amplitude=amplitude, phase=phase)


def query_grid() -> Tensor:
    """The evenly spaced evaluation inputs, shape (50, 1)."""
    return torch.linspace(*X_RANGE, QUERY_POINTS).unsqueeze(1)


@dataclass(frozen=True)
class SineFamily:
    """Sine regression with `shots` training points per task and `eval_shots` per held-out task."""

    shots: int = 50
    eval_shots: int = 10
    name: str = "sine"
    batching: Batching = "stacked"  # a tiny MLP: batched matmuls beat a loop over tasks ~10×

    def make_model(self) -> nn.Module:
        return sine_mlp()

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        # the mean over each task's points: a scalar for one task's (n, 1), the (tasks,) losses
        # of tasks stacked as (tasks, n, 1), which the "stacked" batching relies on
        return (predictions - targets).pow(2).mean(dim=(-2, -1))

    def wave(self, seed: int) -> SineWave:
        """The sine function behind the task with this seed."""
        return sample_wave(torch.Generator().manual_seed(seed))

    def sample_task(self, seed: int) -> Task:
        generator = torch.Generator().manual_seed(seed)
        wave = sample_wave(generator)
        x = _uniform(generator, *X_RANGE, (self.shots, 1))  # (shots, 1)
        return Task(inputs=x, targets=wave(x))

    def sample_eval_task(self, seed: int) -> EvalTask:
        generator = torch.Generator().manual_seed(seed)
        wave = sample_wave(generator)
        x = _uniform(generator, *X_RANGE, (self.eval_shots, 1))  # (eval_shots, 1)
        grid = query_grid()
        return EvalTask(support=Task(x, wave(x)), query=Task(grid, wave(grid)))
