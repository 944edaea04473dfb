"""Held-out evaluation: one stacked adaptation per evaluation scores what adapting each task
on its own for each step count would."""

import pytest
import torch

from reptile.evaluate import evaluate
from reptile.gradients import task_loss
from reptile.inner import InnerConfig, InnerOptimizer, adapt
from reptile.params import init_params
from reptile.tasks import eval_task_seeds
from reptile.tasks.base import Batching
from reptile.tasks.sine import SineFamily

STEP_COUNTS = [0, 1, 5, 12]


def _one_task_at_a_time(
    family: SineFamily, phi: dict[str, torch.Tensor], seeds: list[int], optimizer: InnerOptimizer
) -> dict[int, float]:
    """The definition: each task adapted from φ afresh for each step count, then scored."""
    model = family.make_model()
    losses: dict[int, list[float]] = {k: [] for k in STEP_COUNTS}
    for seed in seeds:
        task = family.sample_eval_task(seed)
        for steps in STEP_COUNTS:
            config = InnerConfig(steps=steps, lr=0.02, optimizer=optimizer)  # full batches
            weights = adapt(model, phi, task.support, config, loss_fn=family.loss)
            losses[steps].append(task_loss(model, weights, family.loss, task.query).item())
    return {k: sum(v) / len(v) for k, v in losses.items()}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
@pytest.mark.parametrize("batching", ["stacked", "vmap", "loop"])
def test_evaluate_scores_each_step_count_as_separate_adaptations_would(
    batching: Batching, optimizer: InnerOptimizer
) -> None:
    family = SineFamily(batching=batching)
    model = family.make_model()
    phi = init_params(model, 1)
    seeds = eval_task_seeds(6)
    expected = _one_task_at_a_time(family, phi, seeds, optimizer)
    config = InnerConfig(steps=12, lr=0.02, optimizer=optimizer)
    measured = evaluate(family, model, phi, seeds, config, [12, 5, 0, 1, 5])
    assert list(measured) == STEP_COUNTS
    assert measured == pytest.approx(expected, rel=1e-5)
    # the adaptation did something, so the test compares more than φ's own loss
    assert measured[12] != pytest.approx(measured[0], rel=1e-2)
