"""The meta-update: ε schedule, one Reptile step by hand, outer Adam, serial reference."""

import pytest
import torch

from reptile.evaluate import evaluate
from reptile.inner import InnerConfig, InnerOptimizer, run_tasks
from reptile.meta import MetaConfig, MetaOptimizer, OuterOptimizer, epsilon
from reptile.params import init_params, scale, subtract, total
from reptile.serial import train_serial
from reptile.tasks import eval_task_seeds, task_seeds
from reptile.tasks.sine import SineFamily

FAMILY = SineFamily()
SCHULMAN = InnerConfig(steps=5, batch_size=10, lr=0.02)  # the Reptile blog's inner loop


def test_epsilon_anneals_linearly() -> None:
    config = MetaConfig(
        rounds=100, meta_batch_size=1, outer_lr=1.0, inner=SCHULMAN, outer_lr_final=0.2
    )
    assert epsilon(0, config) == 1.0
    assert abs(epsilon(50, config) - 0.6) < 1e-12
    assert abs(epsilon(100, config) - 0.2) < 1e-12
    assert [epsilon(r, config) for r in range(100)] == sorted(
        (epsilon(r, config) for r in range(100)), reverse=True
    )


def test_one_reptile_step_matches_a_hand_computation() -> None:
    phi = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([0.5])}
    adapted = [
        {"w": torch.tensor([2.0, 2.0]), "b": torch.tensor([1.5])},
        {"w": torch.tensor([0.0, 4.0]), "b": torch.tensor([0.5])},
    ]
    deltas = [subtract(w, phi) for w in adapted]
    mean = {n: (deltas[0][n] + deltas[1][n]) / 2 for n in phi}
    meta = MetaOptimizer(phi, "sgd")
    meta.step(mean, lr=0.5)
    # φ + ε · mean(W − φ): w = [1, 2] + 0.5·[0, 1] ; b = 0.5 + 0.5·0.5
    assert torch.allclose(meta.phi["w"], torch.tensor([1.0, 2.5]))
    assert torch.allclose(meta.phi["b"], torch.tensor([0.75]))
    assert torch.equal(phi["w"], torch.tensor([1.0, 2.0]))  # the caller's φ is not modified


def test_outer_adam_steps_against_the_pseudo_gradient() -> None:
    phi = {"w": torch.zeros(3)}
    meta = MetaOptimizer(phi, "adam")
    meta.step({"w": torch.tensor([1.0, -2.0, 0.5])}, lr=0.1)
    # Adam's first step moves each coordinate by lr · sign(g) against g = φ − mean W = −delta.
    assert torch.allclose(meta.phi["w"], torch.tensor([0.1, -0.1, 0.1]), atol=1e-6)
    state = meta.state_dict()
    again = MetaOptimizer(meta.phi, "adam")
    again.load_state_dict(state)
    meta.step({"w": torch.ones(3)}, lr=0.1)
    again.step({"w": torch.ones(3)}, lr=0.1)
    assert torch.equal(meta.phi["w"], again.phi["w"])


def _chunked(config: MetaConfig, seed: int, chunks: int) -> dict[str, torch.Tensor]:
    """The service's round, without Ray: chunks summed in order, then one meta-step."""
    model = FAMILY.make_model()
    meta = MetaOptimizer(init_params(model, seed), config.outer_optimizer)
    for r in range(config.rounds):
        seeds = task_seeds(seed, r, config.meta_batch_size)
        parts = [seeds[i::chunks] for i in range(chunks)]
        results = [run_tasks(FAMILY, model, meta.phi, p, config.inner) for p in parts if p]
        delta = total(res.delta_sum for res in results)
        meta.step(scale(delta, 1 / config.meta_batch_size), epsilon(r, config))
    return meta.phi


@pytest.mark.parametrize(
    ("inner_optimizer", "lr", "outer_optimizer", "outer_lr"),
    [("sgd", 0.02, "sgd", 1.0), ("adam", 0.003, "sgd", 1.0), ("sgd", 0.02, "adam", 0.005)],
)
def test_serial_reference_equals_the_chunked_functional_path(
    inner_optimizer: InnerOptimizer, lr: float, outer_optimizer: OuterOptimizer, outer_lr: float
) -> None:
    config = MetaConfig(
        rounds=6,
        meta_batch_size=5,
        outer_lr=outer_lr,
        outer_optimizer=outer_optimizer,
        inner=InnerConfig(steps=5, batch_size=10, lr=lr, optimizer=inner_optimizer),
    )
    reference = train_serial(FAMILY, config, seed=3)
    for chunks in (1, 2, 3):
        phi = _chunked(config, 3, chunks)
        for name in reference:
            assert torch.allclose(phi[name], reference[name], atol=1e-5), (chunks, name)


def test_reptile_learns_an_initialisation_that_adapts_faster() -> None:
    config = MetaConfig(rounds=300, meta_batch_size=5, outer_lr=1.0, inner=SCHULMAN)
    phi = train_serial(FAMILY, config, seed=0)
    model = FAMILY.make_model()
    seeds = eval_task_seeds(16)
    adaptation = InnerConfig(steps=32, lr=0.02)
    trained = evaluate(FAMILY, model, phi, seeds, adaptation, [32])[32]
    random = evaluate(FAMILY, model, init_params(model, 0), seeds, adaptation, [32])[32]
    assert trained < 0.7 * random
