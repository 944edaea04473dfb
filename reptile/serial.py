"""The reference: the paper's Algorithm 2 (batched Reptile) written as directly as possible.

One task after another, an `nn.Module` trained by a fresh `torch.optim` optimiser per task, no
Ray and no vectorisation. The distributed service must reach the same φ for the same seed.
"""

import torch

from reptile.inner import step_batches
from reptile.meta import MetaConfig, MetaOptimizer, epsilon
from reptile.params import Params, init_params, params_of, subtract
from reptile.tasks import TaskFamily, task_seeds


def train_serial(family: TaskFamily, config: MetaConfig, seed: int) -> Params:
    """Meta-train from the initialisation of `seed` and return the final meta-weights φ."""
    model = family.make_model()
    meta = MetaOptimizer(init_params(model, seed), config.outer_optimizer)
    inner = config.inner
    for round_index in range(config.rounds):
        phi = meta.phi
        deltas = []
        for task_seed in task_seeds(seed, round_index, config.meta_batch_size):
            task = family.sample_task(task_seed)
            model.load_state_dict(phi, strict=False)
            optimizer: torch.optim.Optimizer
            if inner.optimizer == "sgd":
                optimizer = torch.optim.SGD(model.parameters(), lr=inner.lr)
            else:
                optimizer = torch.optim.Adam(model.parameters(), lr=inner.lr, betas=(0.0, 0.999))
            for batch in step_batches(inner, len(task.inputs), task_seed):
                optimizer.zero_grad()
                family.loss(model(task.inputs[batch]), task.targets[batch]).backward()
                optimizer.step()
            deltas.append(subtract(params_of(model), phi))
        mean_delta = {n: torch.stack([d[n] for d in deltas]).mean(0) for n in phi}
        meta.step(mean_delta, epsilon(round_index, config))
    return meta.phi
