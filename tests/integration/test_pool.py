"""The Ray worker pool against the serial reference, on a real local Ray."""

import os
import signal
from pathlib import Path
from typing import Any

import pytest
import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group

from reptile.algorithms import AlgorithmConfig, run_chunk
from reptile.evaluate import held_out_accuracies
from reptile.inner import InnerConfig, InnerOptimizer
from reptile.meta import MetaConfig, MetaOptimizer, OuterOptimizer, epsilon, meta_update
from reptile.params import Params, from_numpy, init_params, scale, to_numpy
from reptile.serial import train_serial
from reptile.tasks import eval_task_seeds, make_family, task_seeds
from reptile.tasks.fewshot import ImageSet, with_ways
from tests.utils.net import wait_until
from workers.actor import RoundsRequest
from workers.cluster import gpus_needed
from workers.pool import PoolError, WorkerPool, split

pytestmark = pytest.mark.usefixtures("ray_cluster")

FAMILY = make_family("sine")
SCHULMAN = InnerConfig(steps=5, batch_size=10, lr=0.02)  # the Reptile blog's inner loop


def _distributed(
    pool: WorkerPool, config: MetaConfig, seed: int, *, compile: bool = False
) -> Params:
    meta = MetaOptimizer(init_params(FAMILY.make_model(), seed), config.outer_optimizer)
    for r in range(config.rounds):
        seeds = task_seeds(seed, r, config.meta_batch_size)
        out = pool.run_round(
            meta.phi, seeds, config.inner, compile=compile, algorithm=config.algorithm
        )
        assert out.count == config.meta_batch_size
        meta.step(scale(out.delta_sum, 1 / out.count), epsilon(r, config))
    return meta.phi


def _gone(actor: Any) -> bool:
    """Whether `actor` was killed (a kill takes effect soon after `ray.kill` returns)."""
    try:
        ray.get(actor.pid.remote(), timeout=10)
    except ray.exceptions.RayActorError:
        return True
    return False


def test_split_keeps_order_and_sizes() -> None:
    assert split(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split([1, 2], 3) == [[1], [2]]


@pytest.mark.parametrize(
    ("inner_optimizer", "algorithm"),
    [
        ("sgd", AlgorithmConfig()),
        ("adam", AlgorithmConfig()),
        ("adam", AlgorithmConfig("fomaml", tail_shots=10)),
        ("sgd", AlgorithmConfig("maml", tail_shots=10)),
    ],
    ids=["reptile-sgd", "reptile-adam", "fomaml-adam", "maml-sgd"],
)
def test_same_phi_as_the_serial_loop_with_1_2_3_actors(
    inner_optimizer: InnerOptimizer, algorithm: AlgorithmConfig
) -> None:
    lr = 0.02 if inner_optimizer == "sgd" else 0.003
    config = MetaConfig(
        rounds=5,
        meta_batch_size=7,
        outer_lr=1.0 if algorithm.name != "maml" else 0.01,  # MAML's d_i is a raw gradient
        inner=InnerConfig(steps=5, batch_size=10, lr=lr, optimizer=inner_optimizer),
        algorithm=algorithm,
    )
    reference = train_serial(FAMILY, config, seed=11)
    for workers in (1, 2, 3):
        pool = WorkerPool(task="sine", task_options={}, num_workers=workers)
        try:
            phi = _distributed(pool, config, seed=11)
        finally:
            pool.shutdown()
        for name in reference:
            assert torch.allclose(phi[name], reference[name], atol=1e-5), (workers, name)


def test_actors_with_a_compiled_inner_step_reach_the_serial_phi() -> None:
    """Each actor compiles its step on its first chunk and reuses it for the chunk sizes after."""
    config = MetaConfig(rounds=4, meta_batch_size=5, outer_lr=1.0, inner=SCHULMAN)
    reference = train_serial(FAMILY, config, seed=3)
    pool = WorkerPool(task="sine", task_options={}, num_workers=2)  # chunks of 3 and 2 tasks
    try:
        phi = _distributed(pool, config, seed=3, compile=True)
    finally:
        pool.shutdown()
    assert all(torch.allclose(phi[n], reference[n], atol=1e-5) for n in reference)


def test_a_killed_actor_is_replaced_and_the_round_is_unchanged() -> None:
    config = MetaConfig(rounds=3, meta_batch_size=6, outer_lr=1.0, inner=SCHULMAN)
    reference = train_serial(FAMILY, config, seed=2)
    pool = WorkerPool(task="sine", task_options={}, num_workers=2, chunk_retries=2)
    try:
        pid = ray.get(pool.actors[1].pid.remote())
        os.kill(pid, signal.SIGKILL)
        phi = _distributed(pool, config, seed=2)
    finally:
        pool.shutdown()
    assert all(torch.allclose(phi[n], reference[n], atol=1e-5) for n in reference)
    assert pool.node_ids == {ray.get_runtime_context().get_node_id()}  # the one local node


@pytest.mark.parametrize(
    ("outer_optimizer", "algorithm"),
    [
        ("sgd", AlgorithmConfig()),
        ("adam", AlgorithmConfig()),
        ("sgd", AlgorithmConfig("fomaml", tail_shots=10)),
        ("sgd", AlgorithmConfig("maml", tail_shots=10)),
    ],
    ids=["reptile-sgd", "reptile-adam", "fomaml-sgd", "maml-sgd"],
)
def test_whole_rounds_in_one_actor_reach_the_serial_phi(
    outer_optimizer: OuterOptimizer, algorithm: AlgorithmConfig
) -> None:
    """`in_actor` execution: rounds in calls of 1, 2 and 3, the outer optimiser's state going
    back and forth, a killed actor's call run again from the same φ, give the φ of split rounds
    in one process exactly, and the serial loop's to rounding (with SGD: Adam's division by √v
    magnifies the serial loop's other summation order); the actors not kept are given back."""
    config = MetaConfig(
        rounds=6,
        meta_batch_size=5,
        outer_lr=1.0 if outer_optimizer == "sgd" and algorithm.name != "maml" else 0.01,
        inner=SCHULMAN,
        outer_optimizer=outer_optimizer,
        algorithm=algorithm,
    )
    model = FAMILY.make_model()
    split = MetaOptimizer(init_params(model, 4), outer_optimizer)
    for r in range(config.rounds):
        seeds = task_seeds(4, r, 5)
        result = run_chunk(algorithm, FAMILY, model, split.phi, seeds, config.inner)
        meta_update(split, result.delta_sum, result.count, result.loss_after, r, config)
    meta = MetaOptimizer(init_params(model, 4), outer_optimizer)
    pool = WorkerPool(task="sine", task_options={}, num_workers=2)
    try:
        released = pool.actors[1]
        pool.keep(1)
        assert len(pool.actors) == 1
        wait_until(lambda: _gone(released), 30, "the actor given back to be gone")
        for rounds in (range(0, 1), range(1, 3), range(3, 6)):
            if rounds.start == 3:
                os.kill(ray.get(pool.actors[0].pid.remote()), signal.SIGKILL)
            request = RoundsRequest(
                4, rounds.start, rounds.stop, config, to_numpy(meta.phi), meta.state_dict()
            )
            out = pool.run_rounds(request)
            assert (out.completed, out.diverged) == (len(rounds), False)
            assert out.loss_after.shape == (len(rounds), 5)
            meta.restore(from_numpy(out.phi), out.optimizer_state)
    finally:
        pool.shutdown()
    assert all(torch.equal(meta.phi[n], split.phi[n]) for n in split.phi)
    if outer_optimizer == "sgd":
        reference = train_serial(FAMILY, config, seed=4)
        assert all(torch.allclose(meta.phi[n], reference[n], atol=1e-5) for n in reference)


def test_more_workers_than_cpus_is_refused_up_front() -> None:
    with pytest.raises(PoolError, match="needs 5 CPUs; the Ray cluster has 4"):
        WorkerPool(task="sine", task_options={}, num_workers=5)


def test_gpu_workers_on_a_cluster_without_enough_gpus_are_refused_up_front() -> None:
    with pytest.raises(PoolError, match="needs 1 GPUs; the Ray cluster has 0"):
        WorkerPool(task="sine", task_options={}, num_workers=2, num_gpus=0.5)


def test_a_pool_stops_waiting_for_its_actors_when_its_job_stops() -> None:
    """Actors that cannot start (every CPU reserved) hold a pool up until its start deadline,
    unless its job is stopped (cancel, shutdown): then the pool returns unstarted at once."""
    everything = placement_group([{"CPU": 4}])
    ray.get(everything.ready(), timeout=60)
    try:
        with pytest.raises(PoolError, match=r"did not start within 1s: 1 of 1 still starting"):
            WorkerPool(task="sine", task_options={}, num_workers=1, start_timeout_s=1)
        checks = iter([False, False, True])
        pool = WorkerPool(
            task="sine",
            task_options={},
            num_workers=1,
            start_timeout_s=120,
            should_stop=lambda: next(checks),
        )
        pool.shutdown()
        assert next(checks, "consulted until it said stop") == "consulted until it said stop"
    finally:
        remove_placement_group(everything)


def test_fractional_gpu_actors_pack_onto_whole_gpus() -> None:
    assert gpus_needed(3, 0) == 0
    assert gpus_needed(2, 0.5) == 1
    assert gpus_needed(3, 0.4) == 2  # two share a GPU, the third needs another
    assert gpus_needed(2, 2) == 4


def test_actors_report_their_peak_memory() -> None:
    pool = WorkerPool(task="sine", task_options={}, num_workers=2)
    try:
        peaks = pool.peak_rss_bytes()
    finally:
        pool.shutdown()
    assert len(peaks) == 2
    assert all(50 * 2**20 < peak < 8 * 2**30 for peak in peaks)  # a Python process with torch


def _image_set(path: Path) -> str:
    """A prepared set of random 16×16 images: groups g0–g3 of 4 classes of 8 images each."""
    classes, per_class = 16, 8
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 1, 16, 16), generator=generator)
    prepared = ImageSet(
        images=images.to(torch.uint8),
        labels=torch.arange(classes).repeat(per_class),
        classes=tuple(f"g{c // 4}/c{c}" for c in range(classes)),
        groups=tuple(f"g{c // 4}" for c in range(classes)),
    )
    torch.save(prepared.record(), path)
    return str(path)


def test_held_out_scores_split_over_actors_equal_one_process(tmp_path: Path) -> None:
    """An image job's evaluation on the actors: every task's accuracy as in one process, in
    seed order, with Conv4's φ (450 KB) through the object store, after a lost actor, and for
    held-out tasks of more ways than φ was trained with."""
    options = {"dataset": _image_set(tmp_path / "images.pt"), "ways": 3, "held_out": ["g3"]}
    held_out = {**options, "split": "test", "eval_shots": 2}
    family = make_family("omniglot", **held_out)
    model = family.make_model()
    phi = init_params(model, 0)
    config = InnerConfig(steps=3, lr=0.003, optimizer="adam")
    seeds = eval_task_seeds(5)
    expected = held_out_accuracies(family, model, phi, seeds, config, transductive=False)
    assert len(set(expected)) > 1  # the order is checked
    pool = WorkerPool(task="omniglot", task_options=options, num_workers=2)
    try:
        assert pool.score_held_out(phi, seeds, held_out, config, False) == pytest.approx(expected)
        os.kill(ray.get(pool.actors[0].pid.remote()), signal.SIGKILL)
        assert pool.score_held_out(phi, seeds, held_out, config, False) == pytest.approx(expected)
        wider = make_family("omniglot", **{**held_out, "ways": 4})
        four_way = held_out_accuracies(
            wider, wider.make_model(), with_ways(phi, 4), seeds, config, transductive=False
        )
        scored = pool.score_held_out(phi, seeds, {**held_out, "ways": 4}, config, False)
        assert scored == pytest.approx(four_way)
    finally:
        pool.shutdown()
