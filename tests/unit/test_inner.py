"""The inner loop: mini-batches, SGD and Adam steps against torch.optim and by hand, and the
vectorised loop over a chunk of tasks against one task at a time."""

from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import Tensor
from torch._dynamo.utils import counters

from reptile.gradients import autograd_gradient, batched_gradient, task_loss, tasks_loss
from reptile.inner import (
    InnerConfig,
    InnerOptimizer,
    adapt,
    adapt_tasks,
    batched_step,
    full_batches,
    make_step,
    minibatch_indices,
    run_tasks,
    step_batches,
)
from reptile.params import Params, init_params, params_of, subtract, to_numpy, total
from reptile.tasks import Task, task_seeds
from reptile.tasks.base import Batching
from reptile.tasks.sine import SineFamily
from workers.actor import ChunkOutput, ChunkRequest, InnerLoopWorker, pack, unpack

FAMILY = SineFamily()


def test_minibatches_walk_through_shuffled_epochs() -> None:
    batches = minibatch_indices(50, 5, 10, seed=1)
    assert batches.shape == (5, 10)
    assert sorted(batches.flatten().tolist()) == list(range(50))  # one epoch exactly
    longer = minibatch_indices(50, 12, 10, seed=1)
    assert longer.shape == (12, 10)
    assert torch.equal(longer[:5], batches)
    assert torch.equal(full_batches(4, 3), torch.arange(4).expand(3, 4))
    assert torch.equal(step_batches(InnerConfig(steps=5, lr=0.1, batch_size=10), 50, 1), batches)
    assert torch.equal(step_batches(InnerConfig(steps=3, lr=0.1), 4, 1), full_batches(4, 3))


def test_one_sgd_step_matches_a_hand_computation() -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 0)
    task = FAMILY.sample_task(5)
    first = Task(task.inputs[:10], task.targets[:10])  # one full-batch step on these 10 points
    weights = adapt(model, phi, first, InnerConfig(steps=1, lr=0.1), loss_fn=FAMILY.loss)
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
        config = InnerConfig(steps=8, lr=lr, optimizer=optimizer, batch_size=10)
        weights = adapt(model, phi, task, config, loss_fn=FAMILY.loss, seed=9)
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


# Batched and single matmuls round differently (~1e-7); Adam divides by each coordinate's RMS
# gradient, which magnifies that noise where gradients are near zero: hence 1e-5 for Adam.
@pytest.mark.parametrize("batching", ["stacked", "vmap"])
@pytest.mark.parametrize(("optimizer", "lr", "atol"), [("sgd", 0.02, 1e-6), ("adam", 0.01, 1e-5)])
def test_vectorised_steps_give_each_task_the_weights_of_adapt(
    batching: Batching, optimizer: InnerOptimizer, lr: float, atol: float
) -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 3)
    before = {name: t.clone() for name, t in phi.items()}
    seeds = task_seeds(4, 0, 5)
    tasks = [FAMILY.sample_task(s) for s in seeds]
    batches = torch.stack([minibatch_indices(50, 8, 10, s) for s in seeds])  # (tasks, steps, batch)
    config = InnerConfig(steps=8, lr=lr, optimizer=optimizer, batch_size=10)
    descent = adapt_tasks(
        make_step(batched_gradient(SineFamily(batching=batching), model), config),
        phi,
        torch.stack([t.inputs for t in tasks]),
        torch.stack([t.targets for t in tasks]),
        batches.unbind(1),  # each step's (tasks, batch)
    )
    stacked, losses = descent.final, descent.losses
    assert len(losses) == 8 and losses[0].shape == (len(tasks),)
    for i, task in enumerate(tasks):
        single = adapt(model, phi, task, config, loss_fn=FAMILY.loss, seed=seeds[i])
        for name in phi:
            assert stacked[name].shape == (len(tasks), *phi[name].shape)
            assert torch.allclose(stacked[name][i], single[name], atol=atol), (i, name)
        first = task_loss(
            model, phi, FAMILY.loss, Task(task.inputs[batches[i, 0]], task.targets[batches[i, 0]])
        )
        assert torch.allclose(losses[0][i], first, atol=1e-6)  # each step's loss, φ's first
    assert not torch.allclose(stacked["0.weight"][0], stacked["0.weight"][1])
    assert all(torch.equal(phi[name], before[name]) for name in phi)  # φ left alone


def test_the_sine_familys_written_out_gradient_is_autograds() -> None:
    model = FAMILY.make_model()
    weights = {  # each task its own weights, far from φ
        name: torch.stack([init_params(model, seed)[name] for seed in (1, 2, 3)])
        for name, _ in model.named_parameters()
    }
    before = {name: w.clone() for name, w in weights.items()}
    tasks = FAMILY.sample_tasks([4, 5, 6])
    stacked_loss = tasks_loss(model, FAMILY.loss, "stacked")
    expected, expected_losses = autograd_gradient(
        stacked_loss, weights, tasks.inputs, tasks.targets
    )
    reordered = dict(sorted(weights.items(), reverse=True))  # the layers' order is in the names
    grads, losses = FAMILY.stacked_gradient(reordered, tasks.inputs, tasks.targets)
    assert list(grads) == list(reordered)
    assert torch.allclose(losses, expected_losses, atol=1e-6)
    for name, grad in expected.items():
        assert grads[name].shape == grad.shape
        assert torch.allclose(grads[name], grad, atol=1e-5, rtol=1e-5), name
    assert all(torch.equal(weights[name], before[name]) for name in weights)  # left alone


def test_the_stackable_mlp_is_an_ordinary_module_for_one_task() -> None:
    model = FAMILY.make_model()
    plain = torch.nn.Sequential(
        torch.nn.Linear(1, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 64),
        torch.nn.Tanh(),
        torch.nn.Linear(64, 1),
    )
    plain.load_state_dict(model.state_dict())  # the same parameter names and shapes
    x = torch.linspace(-5, 5, 7).unsqueeze(1)
    assert torch.allclose(model(x), plain(x), atol=1e-6)


def _one_task_at_a_time(
    phi: Params, seeds: list[int], inner: InnerConfig
) -> tuple[Params, Tensor, Tensor]:
    """`run_tasks` written per task: `adapt` each task in seed order, sum the deltas in order,
    score φ and W_i on the task's first mini-batch."""
    model = FAMILY.make_model()
    deltas, before, after = [], [], []
    for seed in seeds:
        task = FAMILY.sample_task(seed)
        assert inner.batch_size is not None
        batches = minibatch_indices(len(task.inputs), inner.steps, inner.batch_size, seed)
        weights = adapt(model, phi, task, inner, loss_fn=FAMILY.loss, seed=seed)
        deltas.append(subtract(weights, phi))
        first = Task(task.inputs[batches[0]], task.targets[batches[0]])
        before.append(task_loss(model, phi, FAMILY.loss, first).detach())
        after.append(task_loss(model, weights, FAMILY.loss, first).detach())
    return total(deltas), torch.stack(before), torch.stack(after)


@pytest.mark.parametrize("batching", ["stacked", "vmap", "loop"])
@pytest.mark.parametrize(("optimizer", "lr"), [("sgd", 0.02), ("adam", 0.003)])
def test_run_tasks_equals_one_task_at_a_time(
    batching: Batching, optimizer: InnerOptimizer, lr: float
) -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 2)
    seeds = task_seeds(0, 0, 6)
    inner = InnerConfig(steps=5, batch_size=10, lr=lr, optimizer=optimizer)
    result = run_tasks(SineFamily(batching=batching), model, phi, seeds, inner)
    delta_sum, loss_before, loss_after = _one_task_at_a_time(phi, seeds, inner)
    assert result.count == 6
    assert result.loss_before.shape == (6,) and result.loss_after.shape == (6,)
    assert torch.allclose(result.loss_before, loss_before, atol=1e-6)
    assert torch.allclose(result.loss_after, loss_after, atol=1e-6)
    assert result.loss_after.mean() < result.loss_before.mean()  # the inner loop learns
    for name in phi:
        assert torch.allclose(result.delta_sum[name], delta_sum[name], atol=1e-6), name


@pytest.mark.parametrize(("optimizer", "lr", "atol"), [("sgd", 0.02, 1e-6), ("adam", 0.003, 1e-4)])
def test_a_compiled_step_gives_the_eager_results_and_compiles_once(
    optimizer: InnerOptimizer, lr: float, atol: float
) -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 4)
    inner = InnerConfig(steps=5, batch_size=10, lr=lr, optimizer=optimizer)
    step = batched_step(FAMILY, model, inner, compile=True)
    graphs = counters["stats"]["unique_graphs"]
    reordered = dict(sorted(phi.items()))  # as the meta-optimiser hands φ out
    for count, weights in ((4, phi), (7, reordered), (2, phi)):  # no recompiling for either
        seeds = task_seeds(count, 0, count)
        compiled = run_tasks(FAMILY, model, weights, seeds, inner, step=step)
        eager = run_tasks(FAMILY, model, phi, seeds, inner)
        for name in phi:
            assert torch.allclose(compiled.delta_sum[name], eager.delta_sum[name], atol=atol)
        assert torch.allclose(compiled.loss_before, eager.loss_before, atol=1e-6)
        assert torch.allclose(compiled.loss_after, eager.loss_after, atol=atol)
    assert counters["stats"]["unique_graphs"] == graphs + 1


def test_chunks_of_a_round_sum_to_the_whole_round() -> None:
    model = FAMILY.make_model()
    phi = init_params(model, 2)
    seeds = task_seeds(0, 0, 7)
    inner = InnerConfig(steps=5, batch_size=10, lr=0.02)
    whole = run_tasks(FAMILY, model, phi, seeds, inner)
    chunks = [run_tasks(FAMILY, model, phi, part, inner) for part in (seeds[:3], seeds[3:])]
    assert torch.allclose(whole.loss_after, torch.cat([c.loss_after for c in chunks]))
    for name in phi:
        summed = chunks[0].delta_sum[name] + chunks[1].delta_sum[name]
        assert torch.allclose(whole.delta_sum[name], summed, atol=1e-6)


def test_a_chunk_computes_on_the_given_device_and_the_actor_returns_numpy() -> None:
    """The GPU plumbing, without a GPU: on the `meta` device any tensor left on the CPU would
    raise, so every step ran there; the actor hands back CPU numpy."""
    model = FAMILY.make_model()
    phi = init_params(model, 2)
    seeds = task_seeds(0, 0, 3)
    inner = InnerConfig(steps=2, batch_size=10, lr=0.02, optimizer="adam")
    on_meta = run_tasks(FAMILY, FAMILY.make_model().to("meta"), phi, seeds, inner, "meta")
    assert {t.device.type for t in [*on_meta.delta_sum.values(), on_meta.loss_after]} == {"meta"}
    worker = InnerLoopWorker("sine", {}, device="cpu")
    request = pack(ChunkRequest(np.array(seeds, np.uint64), inner, to_numpy(phi)))
    output = unpack(worker.run_chunk(request), ChunkOutput)
    expected = run_tasks(FAMILY, model, phi, seeds, inner)
    assert isinstance(output.loss_after, np.ndarray) and output.count == 3
    assert np.allclose(output.loss_after, expected.loss_after.numpy())
    for name in phi:
        assert np.allclose(output.delta_sum[name], expected.delta_sum[name].numpy())


def test_the_actor_takes_phi_inline_or_as_its_own_argument_and_nothing_else() -> None:
    """A small φ rides in the packed request, a large one comes as the call's second argument
    (from the object store); both give the same chunk, and a request without φ is refused."""
    phi = to_numpy(init_params(FAMILY.make_model(), 4))
    seeds = np.array(task_seeds(1, 0, 4), np.uint64)
    inner = InnerConfig(steps=3, batch_size=10, lr=0.02)
    worker = InnerLoopWorker("sine", {}, device="cpu")
    inline = unpack(worker.run_chunk(pack(ChunkRequest(seeds, inner, phi))), ChunkOutput)
    stored = unpack(worker.run_chunk(pack(ChunkRequest(seeds, inner)), phi), ChunkOutput)
    assert np.array_equal(inline.loss_after, stored.loss_after)
    assert all(np.array_equal(inline.delta_sum[n], stored.delta_sum[n]) for n in phi)
    with pytest.raises(ValueError, match="without φ"):
        worker.run_chunk(pack(ChunkRequest(seeds, inner)))
    with pytest.raises(TypeError, match="expected a packed ChunkRequest, got dict"):
        worker.run_chunk(pack(phi))
