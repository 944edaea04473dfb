"""The inner loop: mini-batches, SGD and Adam steps against torch.optim and by hand."""

from collections.abc import Callable

import torch

from reptile.inner import (
    InnerConfig,
    InnerOptimizer,
    adapt,
    full_batches,
    minibatch_indices,
    run_tasks,
)
from reptile.params import init_params, params_of
from reptile.tasks import task_seeds
from reptile.tasks.sine import SineFamily

FAMILY = SineFamily()


def test_minibatches_walk_through_shuffled_epochs() -> None:
    batches = minibatch_indices(50, 5, 10, seed=1)
    assert batches.shape == (5, 10)
    assert sorted(batches.flatten().tolist()) == list(range(50))  # one epoch exactly
    longer = minibatch_indices(50, 12, 10, seed=1)
    assert longer.shape == (12, 10)
    assert torch.equal(longer[:5], batches)
    assert torch.equal(full_batches(4, 3), torch.arange(4).expand(3, 4))


def test_one_sgd_step_matches_a_hand_computation() -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 0)
    task = FAMILY.sample_task(5)
    batch = torch.arange(10).unsqueeze(0)  # one step on the first 10 points
    weights = adapt(model, phi, task, loss_fn=FAMILY.loss, batches=batch, lr=0.1, optimizer="sgd")
    model.load_state_dict(phi)
    model.zero_grad()
    FAMILY.loss(model(task.inputs[:10]), task.targets[:10]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None
        assert torch.allclose(weights[name], phi[name] - 0.1 * p.grad, atol=1e-7)


def test_inner_steps_match_torch_optim_for_sgd_and_adam() -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 1)
    task = FAMILY.sample_task(9)
    batches = minibatch_indices(50, 8, 10, seed=9)
    cases: list[tuple[InnerOptimizer, Callable[..., torch.optim.Optimizer]]] = [
        ("sgd", lambda p: torch.optim.SGD(p, lr=0.02)),
        ("adam", lambda p: torch.optim.Adam(p, lr=0.01, betas=(0.0, 0.999))),
    ]
    for optimizer, make in cases:
        lr = 0.02 if optimizer == "sgd" else 0.01
        weights = adapt(
            model, phi, task, loss_fn=FAMILY.loss, batches=batches, lr=lr, optimizer=optimizer
        )
        model.load_state_dict(phi)
        opt = make(model.parameters())
        for batch in batches:
            opt.zero_grad()
            FAMILY.loss(model(task.inputs[batch]), task.targets[batch]).backward()
            opt.step()
        expected = params_of(model)
        for name in phi:
            assert torch.allclose(weights[name], expected[name], atol=1e-6), (optimizer, name)
            assert not torch.equal(weights[name], phi[name])


def test_run_tasks_sums_deltas_and_reports_losses() -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 2)
    seeds = task_seeds(0, 0, 4)
    inner = InnerConfig(steps=5, batch_size=10, lr=0.02)
    result = run_tasks(FAMILY, model, phi, seeds, inner)
    singles = [run_tasks(FAMILY, model, phi, [s], inner) for s in seeds]
    assert result.count == 4
    assert result.loss_before.shape == (4,) and result.loss_after.shape == (4,)
    assert (result.loss_after < result.loss_before).all()  # the inner loop learns each task
    for name in phi:
        summed = torch.stack([single.delta_sum[name] for single in singles]).sum(0)
        assert torch.allclose(result.delta_sum[name], summed, atol=1e-6)
