"""The outer loop's pieces: the ε schedule and the batched meta-update.

    φ ← φ + ε · mean_i d_i,   d_i = −g_i

is a gradient step with step size ε on the mean of the tasks' meta-gradient estimates g_i
(`reptile.algorithms`: Reptile's pseudo-gradient φ − W_i, FOMAML's last step, MAML's
gradient through the inner loop). The one sign convention: workers return Σ_i d_i (for
Reptile Σ_i(W_i − φ), hence the name `delta_sum`), and `MetaOptimizer.step` negates its mean
into the gradient it hands to `torch.optim.SGD` (plain Reptile) or `torch.optim.Adam`, whose
state can be checkpointed like any optimiser's.
"""

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch

from reptile.algorithms.base import DEFAULT_ALGORITHM, AlgorithmConfig
from reptile.inner import InnerConfig
from reptile.params import Params, is_finite, scale

OuterOptimizer = Literal["sgd", "adam"]


@dataclass(frozen=True)
class MetaConfig:
    """The outer loop's hyper-parameters, named as in the job spec (which holds the defaults)."""

    rounds: int
    meta_batch_size: int
    outer_lr: float
    inner: InnerConfig
    outer_lr_final: float = 0.0
    outer_optimizer: OuterOptimizer = "sgd"
    algorithm: AlgorithmConfig = DEFAULT_ALGORITHM  # how a task becomes its d_i = −g_i


def epsilon(round_index: int, config: MetaConfig) -> float:
    """The outer step size of round `round_index`: linear from outer_lr to outer_lr_final."""
    fraction = round_index / config.rounds
    return config.outer_lr + (config.outer_lr_final - config.outer_lr) * fraction


class MetaOptimizer:
    """Owns φ and applies meta-updates to it; `state_dict` makes it checkpointable."""

    def __init__(self, phi: Params, kind: OuterOptimizer) -> None:
        self.names = sorted(phi)  # a canonical order, so saved optimiser state always lines up
        self.tensors = [phi[name].detach().clone().requires_grad_(True) for name in self.names]
        self.optimizer: torch.optim.Optimizer
        # fused: one kernel for all of φ's tensors rather than ~10 ops per tensor; the same
        # arithmetic
        if kind == "sgd":
            self.optimizer = torch.optim.SGD(self.tensors, lr=1.0, fused=True)
        else:
            self.optimizer = torch.optim.Adam(self.tensors, lr=1.0, fused=True)

    @property
    def phi(self) -> Params:
        """A detached copy of the current meta-weights."""
        return {n: t.detach().clone() for n, t in zip(self.names, self.tensors, strict=True)}

    def step(self, mean_delta: Params, lr: float) -> None:
        """Move φ along mean_i d_i with step size `lr` (ε): a step on the gradient −mean_i d_i."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for name, tensor in zip(self.names, self.tensors, strict=True):
            tensor.grad = -mean_delta[name]  # mean g_i; for Reptile the pseudo-gradient φ − W_i
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def restore(self, phi: Params, state: dict[str, Any]) -> None:
        """Take φ and the optimiser state from elsewhere (an actor that ran rounds)."""
        with torch.no_grad():
            for name, tensor in zip(self.names, self.tensors, strict=True):
                tensor.copy_(phi[name])
        self.optimizer.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of the optimiser state (a copy: later steps do not change it)."""
        return copy.deepcopy(self.optimizer.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)


def meta_update(
    meta: MetaOptimizer,
    delta_sum: Params,
    count: int,
    loss_after: torch.Tensor,
    round_index: int,
    config: MetaConfig,
) -> float | None:
    """Round `round_index`'s update φ ← φ + ε · Σ_i d_i / count; returns ε, or None with φ
    untouched when the mean direction or the adapted losses are not finite (a diverging job).

    The one meta-update, wherever the round's deltas were summed (the controller or an actor).
    """
    mean_delta = scale(delta_sum, 1.0 / count)
    if not (is_finite(mean_delta) and bool(torch.isfinite(loss_after).all())):
        return None
    eps = epsilon(round_index, config)
    meta.step(mean_delta, eps)
    return eps
