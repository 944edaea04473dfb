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
from reptile.params import Params
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


def _scale(uniform: Tensor, bounds: tuple[float, float]) -> Tensor:
    low, high = bounds
    return low + (high - low) * uniform


def _draw(seeds: list[int], shots: int) -> tuple[Tensor, Tensor, Tensor]:
    """Amplitudes (tasks,), phases (tasks,) and inputs (tasks, shots, 1) of the tasks of `seeds`.

    Each task's 2 + shots uniforms come from a generator seeded with its own seed alone, in one
    call, so a task is the same in any chunk; the scaling to the paper's ranges then runs for
    all tasks at once (per-task tensor ops would dominate sampling a chunk).
    """
    generator = torch.Generator()
    uniform = torch.stack(
        [torch.rand(2 + shots, generator=generator.manual_seed(seed)) for seed in seeds]
    )
    amplitude = _scale(uniform[:, 0], AMPLITUDE_RANGE)
    phase = _scale(uniform[:, 1], PHASE_RANGE)
    return amplitude, phase, _scale(uniform[:, 2:], X_RANGE).unsqueeze(-1)


def _wave_and_inputs(seed: int, shots: int) -> tuple[SineWave, Tensor]:
    """The sine function of the task of `seed` and its `shots` inputs, shape (shots, 1)."""
    amplitude, phase, x = _draw([seed], shots)
    return SineWave(amplitude=amplitude.item(), phase=phase.item()), x[0]


def query_grid() -> Tensor:
    """The evenly spaced evaluation inputs, shape (50, 1)."""
    return torch.linspace(*X_RANGE, QUERY_POINTS).unsqueeze(1)


@dataclass(frozen=True)
class SineFamily:
    """Sine regression with `shots` training points per task and `eval_shots` per held-out task."""

    shots: int = 50
    eval_shots: int = 10
    name: str = "sine"
    # a tiny MLP: one batched matmul per layer for all tasks, not a loop over them
    batching: Batching = "stacked"

    def make_model(self) -> nn.Module:
        return sine_mlp()

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        # the mean over each task's points: a scalar for one task's (n, 1), the (tasks,) losses
        # of tasks stacked as (tasks, n, 1), which the "stacked" batching relies on
        return (predictions - targets).pow(2).mean(dim=(-2, -1))

    def stacked_gradient(
        self, weights: Params, inputs: Tensor, targets: Tensor
    ) -> tuple[Params, Tensor]:
        """Backpropagation through the MLP (`sine_mlp`: linear layers, tanh between) and `loss`,
        written out for weights stacked over tasks, (tasks, out, in) and (tasks, out) per layer,
        and inputs and targets (tasks, n, 1).

        The same numbers as autograd (tests/unit/test_inner.py), without its graph and engine,
        which cost more than the arithmetic on this tiny model.
        """
        layers = sorted({name.split(".")[0] for name in weights}, key=int)  # "0", "2", "4"
        activations = [inputs]  # each layer's input
        for number, layer in enumerate(layers, start=1):
            weight, bias = weights[f"{layer}.weight"], weights[f"{layer}.bias"]
            output = torch.baddbmm(bias.unsqueeze(1), activations[-1], weight.mT)
            activations.append(output.tanh_() if number < len(layers) else output)
        error = activations.pop() - targets  # (tasks, n, 1)
        losses = error.square().mean(dim=(1, 2))
        upstream = error.mul_(2 / error[0].numel())  # d(losses) / d(output)
        grads = {}
        for layer, layer_input in zip(reversed(layers), reversed(activations), strict=True):
            grads[f"{layer}.bias"] = upstream.sum(1)
            grads[f"{layer}.weight"] = torch.bmm(upstream.mT, layer_input)
            if layer_input is not inputs:  # back through this layer and the tanh before it
                upstream = torch.bmm(upstream, weights[f"{layer}.weight"])
                upstream.mul_(1 - layer_input.square())
        return {name: grads[name] for name in weights}, losses

    def tail_indices(self, tail_shots: int) -> Tensor:
        # a task's points are i.i.d.: its last ones are as good a tail as any
        if not 0 < tail_shots < self.shots:
            raise ValueError(f"tail_shots must be in 1..{self.shots - 1}, got {tail_shots}")
        return torch.arange(self.shots - tail_shots, self.shots)

    def wave(self, seed: int) -> SineWave:
        """The sine function behind the task with this seed."""
        wave, _ = _wave_and_inputs(seed, 0)
        return wave

    def sample_tasks(self, seeds: list[int]) -> Task:
        amplitude, phase, x = _draw(seeds, self.shots)  # x: (tasks, shots, 1)
        y = amplitude.view(-1, 1, 1) * torch.sin(x + phase.view(-1, 1, 1))
        return Task(inputs=x, targets=y)

    def sample_task(self, seed: int) -> Task:
        tasks = self.sample_tasks([seed])
        return Task(inputs=tasks.inputs[0], targets=tasks.targets[0])

    def sample_eval_task(self, seed: int) -> EvalTask:
        wave, x = _wave_and_inputs(seed, self.eval_shots)
        grid = query_grid()
        return EvalTask(support=Task(x, wave(x)), query=Task(grid, wave(grid)))
