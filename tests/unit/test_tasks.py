"""Task families: tasks rebuilt from seeds, the paper's ranges, seeds independent of workers."""

import math

import torch

from reptile.tasks import eval_task_seeds, make_family, task_seeds
from reptile.tasks.sine import SineFamily


def test_sine_task_is_rebuilt_from_its_seed() -> None:
    family = SineFamily(shots=50)
    a, b = family.sample_task(123), family.sample_task(123)
    assert a.inputs.shape == (50, 1) and a.targets.shape == (50, 1)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    assert not torch.equal(a.inputs, family.sample_task(124).inputs)


def test_sine_tasks_stacked_are_the_tasks_one_by_one_in_any_company() -> None:
    """A worker samples its chunk at once: each task must not depend on the others drawn."""
    family = SineFamily(shots=20)
    seeds = task_seeds(5, 2, 6)
    stacked = family.sample_tasks(seeds)
    assert stacked.inputs.shape == (6, 20, 1) and stacked.targets.shape == (6, 20, 1)
    for index, seed in enumerate(seeds):
        alone = family.sample_task(seed)
        assert torch.equal(stacked.inputs[index], alone.inputs)
        assert torch.equal(stacked.targets[index], alone.targets)
    assert torch.equal(family.sample_tasks(seeds[3:]).targets, stacked.targets[3:])


def test_sine_parameters_follow_the_paper_ranges() -> None:
    family = SineFamily()
    waves = [family.wave(seed) for seed in task_seeds(0, 0, 500)]
    assert all(0.1 <= w.amplitude <= 5.0 for w in waves)
    assert all(0.0 <= w.phase <= 2 * math.pi for w in waves)
    xs = torch.cat([family.sample_task(s).inputs for s in task_seeds(0, 1, 50)])
    assert xs.min() >= -5.0 and xs.max() <= 5.0
    task = family.sample_task(7)
    wave = family.wave(7)
    assert torch.allclose(task.targets, wave.amplitude * torch.sin(task.inputs + wave.phase))


def test_eval_task_has_shots_and_an_even_query_grid() -> None:
    task = SineFamily(eval_shots=10).sample_eval_task(eval_task_seeds(1)[0])
    assert task.support.inputs.shape == (10, 1)
    assert torch.allclose(task.query.inputs.squeeze(1), torch.linspace(-5, 5, 50))


def test_round_seeds_depend_on_job_seed_and_round_only() -> None:
    assert task_seeds(3, 7, 10) == task_seeds(3, 7, 10)
    assert task_seeds(3, 7, 10)[:4] == task_seeds(3, 7, 4)  # prefix-stable in the count
    assert task_seeds(3, 7, 10) != task_seeds(3, 8, 10)
    assert task_seeds(3, 7, 10) != task_seeds(4, 7, 10)
    assert len(set(task_seeds(0, 0, 1000))) == 1000
    assert not set(eval_task_seeds(100)) & {s for r in range(100) for s in task_seeds(0, r, 10)}


def test_unknown_family_is_a_clear_error() -> None:
    try:
        make_family("imagenet")
    except ValueError as error:
        assert "unknown task family 'imagenet'" in str(error)
    else:
        raise AssertionError("expected ValueError")
