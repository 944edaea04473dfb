"""Meta-learning algorithms by name: a new algorithm is one module plus one line in
`ALGORITHMS` (and its name in `AlgorithmName`). See `base` for what an algorithm provides."""

import torch
from torch import nn

from reptile.algorithms.base import DEFAULT_ALGORITHM, Algorithm, AlgorithmConfig, AlgorithmName
from reptile.algorithms.fomaml import FIRST_ORDER_MAML
from reptile.algorithms.maml import SECOND_ORDER_MAML
from reptile.algorithms.reptile import REPTILE
from reptile.inner import ChunkResult, InnerConfig, InnerStep
from reptile.params import Params
from reptile.tasks.base import TaskFamily

ALGORITHMS: dict[str, Algorithm] = {
    "reptile": REPTILE,
    "fomaml": FIRST_ORDER_MAML,
    "maml": SECOND_ORDER_MAML,
}


def run_chunk(
    algorithm: AlgorithmConfig,
    family: TaskFamily,
    model: nn.Module,
    phi: Params,
    seeds: list[int],
    config: InnerConfig,
    device: torch.device | str = "cpu",
    step: InnerStep | None = None,
) -> ChunkResult:
    """Σ_i d_i over the tasks of `seeds` as `algorithm` computes them (what a worker runs)."""
    return ALGORITHMS[algorithm.name].run_chunk(
        family, model, phi, seeds, config, algorithm.tail_shots, device, step
    )


__all__ = [
    "ALGORITHMS",
    "DEFAULT_ALGORITHM",
    "Algorithm",
    "AlgorithmConfig",
    "AlgorithmName",
    "run_chunk",
]
