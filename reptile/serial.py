"""The references: each algorithm's meta-training written as directly as possible (for Reptile
the paper's Algorithm 2, batched).

One task after another, no Ray and no vectorisation: each task's d_i comes from its
algorithm's plain `serial_direction` (for Reptile and FOMAML an `nn.Module` trained by a fresh
`torch.optim` optimiser per task; for MAML plain autograd through the inner loop). The
distributed service must reach the same φ for the same seed.
"""

import torch

from reptile.algorithms import ALGORITHMS
from reptile.meta import MetaConfig, MetaOptimizer, epsilon
from reptile.params import Params, init_params
from reptile.tasks import TaskFamily, task_seeds


def train_serial(family: TaskFamily, config: MetaConfig, seed: int) -> Params:
    """Meta-train from the initialisation of `seed` and return the final meta-weights φ."""
    model = family.make_model()
    meta = MetaOptimizer(init_params(model, seed), config.outer_optimizer)
    algorithm = ALGORITHMS[config.algorithm.name]
    for round_index in range(config.rounds):
        phi = meta.phi
        deltas = []
        for task_seed in task_seeds(seed, round_index, config.meta_batch_size):
            task = family.sample_task(task_seed)
            deltas.append(
                algorithm.serial_direction(
                    family, model, phi, task, task_seed, config.inner, config.algorithm.tail_shots
                )
            )
        mean_delta = {n: torch.stack([d[n] for d in deltas]).mean(0) for n in phi}
        meta.step(mean_delta, epsilon(round_index, config))
    return meta.phi
