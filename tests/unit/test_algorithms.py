"""Reptile, FOMAML and MAML: each chunk against its plain per-task reference, MAML's gradient
against finite differences, and the tails the algorithms hold out."""

import pytest
import torch

from reptile.algorithms import ALGORITHMS, AlgorithmConfig, run_chunk
from reptile.algorithms.maml import SECOND_ORDER_MAML
from reptile.gradients import task_loss
from reptile.inner import InnerConfig, InnerOptimizer, adapt
from reptile.params import Params, init_params, total
from reptile.tasks import make_family, task_seeds
from reptile.tasks.base import Batching, Task, split_tail
from reptile.tasks.fewshot import FewShotFamily, ImageSet
from reptile.tasks.sine import SineFamily

ALGORITHM_CONFIGS = [
    AlgorithmConfig("reptile"),
    AlgorithmConfig("fomaml"),
    AlgorithmConfig("fomaml", tail_shots=10),
    AlgorithmConfig("maml", tail_shots=10),
]


def _serial_sum(
    family: SineFamily | FewShotFamily,
    phi: Params,
    seeds: list[int],
    config: InnerConfig,
    algorithm: AlgorithmConfig,
) -> Params:
    model = family.make_model()
    return total(
        ALGORITHMS[algorithm.name].serial_direction(
            family, model, phi, family.sample_task(s), s, config, algorithm.tail_shots
        )
        for s in seeds
    )


@pytest.mark.parametrize("algorithm", ALGORITHM_CONFIGS, ids=lambda a: f"{a.name}-{a.tail_shots}")
@pytest.mark.parametrize("batching", ["stacked", "vmap", "loop"])
@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.02), ("adam", 0.01)])
def test_each_chunk_equals_its_plain_reference(
    algorithm: AlgorithmConfig, batching: Batching, optimizer: InnerOptimizer, lr: float
) -> None:
    # MAML through Adam: the derivative of Adam's g/√v, ~0 but for a spike where g ≈ 0, turns
    # float32 rounding into gradients of the wrong size (the service refuses maml with inner
    # Adam); in float64 it is exact
    dtype = torch.float64 if (algorithm.name, optimizer) == ("maml", "adam") else torch.float32
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        family = SineFamily(batching=batching)
        model = family.make_model()
        phi = init_params(model, 5)
        seeds = task_seeds(1, 0, 4)
        config = InnerConfig(steps=4, lr=lr, optimizer=optimizer, batch_size=10)
        result = run_chunk(algorithm, family, model, phi, seeds, config)
        reference = _serial_sum(family, phi, seeds, config, algorithm)
    finally:
        torch.set_default_dtype(default)
    assert result.count == 4 and result.loss_before.shape == result.loss_after.shape == (4,)
    assert result.delta_sum["0.weight"].dtype == dtype
    for name in phi:
        assert torch.allclose(result.delta_sum[name], reference[name], atol=1e-5), name


def test_the_algorithms_move_phi_differently() -> None:
    family = SineFamily()
    model = family.make_model()
    phi = init_params(model, 5)
    config = InnerConfig(steps=4, lr=0.02, batch_size=10)
    sums = [run_chunk(a, family, model, phi, [7, 8], config).delta_sum for a in ALGORITHM_CONFIGS]
    for i, a in enumerate(sums):
        for b in sums[i + 1 :]:
            assert not torch.allclose(a["4.weight"], b["4.weight"])


def test_fomaml_with_sgd_steps_along_the_tails_gradient_after_k_minus_1_steps() -> None:
    """The paper's `--foml --foml-tail`: k − 1 mini-batches off the tail, then the tail's own
    gradient at W_{k−1}, times −lr."""
    family = SineFamily()
    model = family.make_model()
    phi = init_params(model, 2)
    config = InnerConfig(steps=3, lr=0.02, batch_size=10)
    result = run_chunk(AlgorithmConfig("fomaml", tail_shots=5), family, model, phi, [9], config)
    task = family.sample_task(9)
    pool, tail = split_tail(family, 50, 5)
    rest = Task(task.inputs[pool], task.targets[pool])
    before_last = adapt(
        model, phi, rest, InnerConfig(2, 0.02, batch_size=10), loss_fn=family.loss, seed=9
    )
    leaves = {n: w.requires_grad_() for n, w in before_last.items()}
    loss = task_loss(model, leaves, family.loss, Task(task.inputs[tail], task.targets[tail]))
    grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values())), strict=True))
    for name in phi:
        assert torch.allclose(result.delta_sum[name], -0.02 * grads[name], atol=1e-6), name


@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.05), ("adam", 0.01)])
def test_maml_is_the_gradient_of_the_query_loss_through_the_inner_loop(
    optimizer: InnerOptimizer, lr: float
) -> None:
    """Against central finite differences of the query loss after k steps, as a function of φ,
    along random directions, in float64 (the loop run by `adapt`, no autograd through it)."""
    family = SineFamily(shots=12)
    model = family.make_model().double()
    phi = {n: t.double() for n, t in init_params(model, 3).items()}
    sampled = family.sample_task(4)
    task = Task(sampled.inputs.double(), sampled.targets.double())
    config = InnerConfig(steps=3, lr=lr, optimizer=optimizer, batch_size=4)
    direction = SECOND_ORDER_MAML.serial_direction(family, model, phi, task, 4, config, 4)
    pool, tail = split_tail(family, 12, 4)
    rest, query = (
        Task(task.inputs[pool], task.targets[pool]),
        Task(task.inputs[tail], task.targets[tail]),
    )

    def query_loss(weights: Params) -> float:
        adapted = adapt(model, weights, rest, config, loss_fn=family.loss, seed=4)
        return task_loss(model, adapted, family.loss, query).item()

    generator = torch.Generator().manual_seed(0)
    h = 1e-6
    for _ in range(3):
        v = {
            n: torch.randn(t.shape, generator=generator, dtype=torch.float64)
            for n, t in phi.items()
        }
        plus = query_loss({n: phi[n] + h * v[n] for n in phi})
        minus = query_loss({n: phi[n] - h * v[n] for n in phi})
        numeric = (plus - minus) / (2 * h)
        analytic = -sum(float((direction[n] * v[n]).sum()) for n in phi)  # d = −g
        assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)


def test_maml_and_reptile_refuse_what_they_cannot_use() -> None:
    family = SineFamily()
    model = family.make_model()
    phi = init_params(model, 0)
    config = InnerConfig(steps=2, lr=0.02, batch_size=10)
    with pytest.raises(ValueError, match="MAML needs a query set"):
        run_chunk(AlgorithmConfig("maml"), family, model, phi, [1], config)
    with pytest.raises(ValueError, match="no tail_shots"):
        run_chunk(AlgorithmConfig("reptile", tail_shots=3), family, model, phi, [1], config)
    with pytest.raises(ValueError, match="inner_steps ≥ 2"):
        run_chunk(
            AlgorithmConfig("fomaml", tail_shots=3),
            family,
            model,
            phi,
            [1],
            InnerConfig(1, 0.02, batch_size=10),
        )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A prepared set of random 16×16 images: groups g0–g2 of 4 classes of 6 images each."""
    classes, per_class = 12, 6
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (classes * per_class, 1, 16, 16), generator=generator)
    prepared = ImageSet(
        images=pixels.to(torch.uint8),
        labels=torch.arange(classes).repeat(per_class),
        classes=tuple(f"g{c // 4}/c{c}" for c in range(classes)),
        groups=tuple(f"g{c // 4}" for c in range(classes)),
    )
    path = tmp_path_factory.mktemp("algorithms") / "images.pt"
    torch.save(prepared.record(), path)
    return str(path)


def test_an_image_tasks_tail_is_the_last_shots_of_every_class(images: str) -> None:
    family = make_family("omniglot", dataset=images, ways=3, shots=4, held_out=("g2",))
    assert family.tail_indices(1).tolist() == [3, 7, 11]
    pool, tail = split_tail(family, 12, 2)
    assert tail.tolist() == [2, 3, 6, 7, 10, 11] and pool.tolist() == [0, 1, 4, 5, 8, 9]
    task = family.sample_task(3)
    assert task.targets[tail].tolist() == [0, 0, 1, 1, 2, 2]  # each class keeps its tail
    with pytest.raises(ValueError, match="tail_shots must be in 1..3"):
        family.tail_indices(4)


@pytest.mark.parametrize(
    "algorithm", ALGORITHM_CONFIGS[1:], ids=lambda a: f"{a.name}-{a.tail_shots}"
)
def test_conv4_with_batch_norm_runs_every_algorithm_like_its_reference(
    images: str, algorithm: AlgorithmConfig
) -> None:
    """Conv4's batch norm under `functional_call`, and MAML's second order through it."""
    tail = 1 if algorithm.tail_shots else 0
    family = make_family("omniglot", dataset=images, ways=3, shots=4, held_out=("g2",))
    assert isinstance(family, FewShotFamily)
    model = family.make_model()
    phi = init_params(model, 1)
    config = InnerConfig(steps=3, lr=0.003, optimizer="adam", batch_size=6)
    if algorithm.name == "maml":  # the service's MAML learns by SGD (its spec refuses Adam)
        config = InnerConfig(steps=3, lr=0.05, batch_size=6)
    chosen = AlgorithmConfig(algorithm.name, tail)
    result = run_chunk(chosen, family, model, phi, [4, 5], config)
    reference = _serial_sum(family, phi, [4, 5], config, chosen)
    assert all(bool(torch.isfinite(d).all()) for d in result.delta_sum.values())
    for name in phi:
        assert torch.allclose(result.delta_sum[name], reference[name], atol=1e-5), name
