"""The throughput bench's in-process path: the trainer's round loop on an in-process worker, the
timing window, and the overhead bar's reading of a scaling curve."""

import math
from pathlib import Path

import torch

from bench.throughput.bars import overhead_below_bar_from
from bench.throughput.inprocess import InProcessRunner
from bench.throughput.measurement import (
    Measurement,
    WorkloadResult,
    measure_vectorised,
    other_runners,
)
from bench.throughput.workloads import sized
from reptile.inner import run_tasks
from reptile.params import init_params
from reptile.tasks import task_seeds
from service.specs import SineJobSpec
from service.weights import read_checkpoint

SPEC = SineJobSpec(meta_batch_size=4, inner_steps=2, eval_every=0, eval_tasks=1)


def test_the_in_process_runner_returns_what_the_inner_loop_computes() -> None:
    runner = InProcessRunner("sine", {})
    phi = init_params(runner.worker.model, 0)
    seeds = task_seeds(0, 0, 4)
    output = runner.run_round(phi, seeds, SPEC.inner_config())
    expected = run_tasks(runner.worker.family, runner.worker.model, phi, seeds, SPEC.inner_config())
    assert output.count == 4
    for name, delta in expected.delta_sum.items():
        torch.testing.assert_close(output.delta_sum[name], delta)
    torch.testing.assert_close(torch.from_numpy(output.loss_after), expected.loss_after)


def test_the_vectorised_path_times_the_rounds_asked_through_the_trainer(tmp_path: Path) -> None:
    spec = sized(SPEC, 4, 3)
    measured = measure_vectorised(InProcessRunner("sine", {}), spec, tmp_path, None)
    assert (measured.path, measured.actors, measured.mode) == ("vectorised", 0, "stacked")
    assert (measured.rounds, measured.meta_batch_size) == (3, 4)
    assert 0 < measured.compute < measured.seconds
    assert math.isclose(measured.compute + measured.overhead + measured.logging, measured.seconds)
    # the trainer ran one round more, outside the window, and checkpointed it
    assert read_checkpoint(tmp_path / "checkpoint.safetensors").round == 4


def test_other_runners_cover_every_other_batching_mode() -> None:
    assert [r.batching for r in other_runners(SPEC, None, "stacked")] == ["vmap", "loop"]


def _service(size: int, overhead_fraction: float) -> Measurement:
    return Measurement("service", 2, size, 1, 1.0, 1.0 - overhead_fraction, overhead_fraction, 0)


def test_the_overhead_bar_holds_from_the_size_after_which_it_stays_below() -> None:
    serial = Measurement("serial", 0, 4, 1, 1.0, 1.0, 0.0, 0.0)

    def result(fractions: dict[int, float]) -> WorkloadResult:
        scaling = [_service(size, f) for size, f in fractions.items()]
        return WorkloadResult("sine", SPEC, serial, [], scaling, [], [], {}, (2,))

    assert overhead_below_bar_from(result({1: 0.3, 2: 0.05, 4: 0.2, 8: 0.05, 16: 0.01}), 2) == 8
    assert overhead_below_bar_from(result({1: 0.3, 2: 0.2}), 2) is None
