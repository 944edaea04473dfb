"""The gradient-combination bench's meta-directions: all four steps are Reptile's, the last
alone is FOMAML's."""

import torch

from bench.combinations import INNER, combined_direction
from reptile.algorithms import AlgorithmConfig, AlgorithmName, run_chunk
from reptile.params import init_params
from reptile.tasks.sine import SineFamily


def test_all_steps_are_reptile_and_the_last_alone_is_fomaml() -> None:
    family = SineFamily()
    model = family.make_model()
    phi = init_params(model, 1)
    seeds = [3, 4, 5]
    cases: list[tuple[tuple[int, ...], AlgorithmName]] = [
        ((1, 2, 3, 4), "reptile"),
        ((4,), "fomaml"),
    ]
    for used, algorithm in cases:
        direction = combined_direction(family, model, phi, seeds, used)
        expected = run_chunk(AlgorithmConfig(algorithm), family, model, phi, seeds, INNER)
        for name in phi:
            assert torch.allclose(direction[name], expected.delta_sum[name], atol=1e-6), name
    first = combined_direction(family, model, phi, seeds, (1,))
    assert not torch.allclose(first["4.weight"], direction["4.weight"])
