"""The round loop with in-process stand-ins for Ray and MLflow (the real ones: integration)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from reptile.algorithms import AlgorithmConfig, run_chunk
from reptile.inner import InnerConfig
from reptile.params import Params, to_numpy
from reptile.serial import train_serial
from reptile.tasks import eval_task_seeds, make_family
from reptile.tasks.sine import SineFamily
from service.plots import Drawing, learning_curve_png, sine_fit_png
from service.specs import SineJobSpec
from service.trainer import Divergence, MetaTrainer, Progress
from service.weights import read_checkpoint
from workers.actor import InnerLoopWorker, RoundsOutput, RoundsRequest, pack, unpack
from workers.pool import RoundOutput

SPEC = SineJobSpec(
    rounds=6,
    meta_batch_size=4,
    eval_every=3,
    checkpoint_every=2,
    eval_tasks=4,
    execution="split",
)


class InProcessRunner:
    """Runs the round's tasks in this process, as one chunk."""

    def __init__(self, spec: SineJobSpec, poison_round: int | None = None) -> None:
        self.family = make_family(spec.task, **spec.task_options())
        self.model = self.family.make_model()
        self.worker = InnerLoopWorker(spec.task, spec.task_options())
        self.poison_round = poison_round
        self.rounds = 0
        self.calls: list[range] = []  # the in_actor calls' rounds
        self.kept: int | None = None

    def run_round(
        self,
        phi: Params,
        seeds: list[int],
        config: InnerConfig,
        *,
        compile: bool,
        algorithm: AlgorithmConfig,
    ) -> RoundOutput:
        self.rounds += 1
        result = run_chunk(algorithm, self.family, self.model, phi, seeds, config)
        delta = result.delta_sum
        if self.rounds == self.poison_round:
            delta = {n: t * float("nan") for n, t in delta.items()}
        return RoundOutput(
            delta_sum={n: torch.from_numpy(a) for n, a in to_numpy(delta).items()},
            count=result.count,
            loss_before=result.loss_before.numpy(),
            loss_after=result.loss_after.numpy(),
            compute_seconds=0.0,
            work_seconds=0.0,
        )

    def run_rounds(self, request: RoundsRequest) -> RoundsOutput:
        """Whole rounds as an actor runs them: the actor's own code, without Ray."""
        self.calls.append(range(request.start, request.stop))
        return unpack(self.worker.run_rounds(pack(request)), RoundsOutput)

    def keep(self, count: int) -> None:
        self.kept = count

    def score_held_out(
        self,
        phi: Params,
        seeds: list[int],
        family: dict[str, Any],
        config: InnerConfig,
        transductive: bool,
    ) -> list[float]:
        raise AssertionError("sine jobs are evaluated in the trainer's process")


@dataclass
class RecordingSink:
    """Keeps what is logged; figures undrawn, as the tracker's queue holds them."""

    metrics: list[tuple[int, dict[str, float]]] = field(default_factory=list)
    artifacts: dict[str, bytes] = field(default_factory=dict)
    figures: dict[str, list[Drawing]] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        self.metrics.append((step, metrics))

    def log_artifact(self, data: bytes, artifact_path: str) -> None:
        self.artifacts[artifact_path] = data

    def log_figure(self, draw: Drawing, artifact_path: str) -> None:
        self.figures.setdefault(artifact_path, []).append(draw)

    def set_tag(self, key: str, value: str) -> None:
        self.tags[key] = value


def test_trainer_matches_the_serial_reference_and_logs_everything(tmp_path: Path) -> None:
    sink, progress = RecordingSink(), list[Progress]()
    trainer = MetaTrainer(
        SPEC,
        InProcessRunner(SPEC),
        sink,
        tmp_path / "ckpt.safetensors",
        on_progress=progress.append,
    )
    assert trainer.run() is True
    reference = train_serial(trainer.family, SPEC.meta_config(), SPEC.seed)
    assert all(torch.allclose(trainer.phi[n], reference[n], atol=1e-6) for n in reference)
    round_steps = [s for s, m in sink.metrics if "epsilon" in m]
    assert round_steps == [1, 2, 3, 4, 5, 6]
    eval_steps = [s for s, m in sink.metrics if "eval_mse_after_32" in m]
    assert eval_steps == [0, 3, 6]
    assert sink.figures.keys() == {"plots/sine_fit.png", "plots/learning_curve.png"}
    # figures at most every 10 s, and at the end: rounds 0 and 6 of this quick job
    assert all(len(drawings) == 2 for drawings in sink.figures.values())
    assert all(draw().startswith(b"\x89PNG") for draw in sink.figures["plots/sine_fit.png"])
    assert [p.checkpoint_round for p in progress if p.checkpoint_round] == [2, 4, 6]
    assert read_checkpoint(tmp_path / "ckpt.safetensors").round == 6


def test_figures_drawn_after_the_job_show_the_round_they_were_logged_at(tmp_path: Path) -> None:
    """The tracker draws figures later: each must hold its round's φ and history, not the
    trainer's latest."""
    sink = RecordingSink()
    trainer = MetaTrainer(
        SPEC, InProcessRunner(SPEC), sink, tmp_path / "ckpt.safetensors", figure_interval_s=0
    )
    phi_at_start = trainer.phi
    assert trainer.run() is True
    assert all(len(drawings) == 3 for drawings in sink.figures.values())  # rounds 0, 3, 6
    family = trainer.family
    assert isinstance(family, SineFamily)
    first_fit = sine_fit_png(
        family,
        phi_at_start,
        InnerConfig(steps=SPEC.inner_steps, lr=SPEC.inner_lr, optimizer=SPEC.inner_optimizer),
        seed=eval_task_seeds(SPEC.eval_tasks)[0],
        title="round 0",
    )
    assert sink.figures["plots/sine_fit.png"][0]() == first_fit
    curve_at_round_3 = learning_curve_png(trainer.history[:2], "eval_mse")
    assert sink.figures["plots/learning_curve.png"][1]() == curve_at_round_3
    assert curve_at_round_3 != learning_curve_png(trainer.history, "eval_mse")


def test_stop_and_resume_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.safetensors"
    spec = SPEC.model_copy(update={"outer_optimizer": "adam", "outer_lr": 0.01})
    first = MetaTrainer(spec, InProcessRunner(spec), RecordingSink(), path)
    assert first.run(should_stop=lambda: first.round >= 3) is False
    checkpoint = read_checkpoint(path)
    assert checkpoint.round == 3
    resumed = MetaTrainer(spec, InProcessRunner(spec), RecordingSink(), path, resume=checkpoint)
    assert resumed.run() is True
    straight = MetaTrainer(spec, InProcessRunner(spec), RecordingSink(), tmp_path / "b")
    straight.run()
    assert all(torch.equal(resumed.phi[n], straight.phi[n]) for n in straight.phi)


def test_a_job_stopped_before_its_first_round_does_nothing(tmp_path: Path) -> None:
    """A stop that came while the workers started: no evaluation, no round, no checkpoint."""
    sink = RecordingSink()
    trainer = MetaTrainer(SPEC, InProcessRunner(SPEC), sink, tmp_path / "d")
    phi = {n: t.clone() for n, t in trainer.phi.items()}
    assert trainer.run(should_stop=lambda: True) is False
    assert (trainer.round, sink.metrics, sink.artifacts, sink.figures) == (0, [], {}, {})
    assert not (tmp_path / "d").exists()
    assert all(torch.equal(trainer.phi[n], phi[n]) for n in phi)


def test_divergence_fails_the_round_and_keeps_phi(tmp_path: Path) -> None:
    trainer = MetaTrainer(
        SPEC, InProcessRunner(SPEC, poison_round=4), RecordingSink(), tmp_path / "c"
    )
    seen: list[Progress] = []
    trainer.on_progress = seen.append
    with pytest.raises(Divergence, match="non-finite in round 4"):
        trainer.run()
    assert all(bool(torch.isfinite(t).all()) for t in trainer.phi.values())
    assert seen[-1].round == 3
    checkpoint = read_checkpoint(tmp_path / "c")  # the failing job keeps round 3, not just 2
    assert checkpoint.round == 3
    assert all(torch.equal(checkpoint.phi[n], trainer.phi[n]) for n in trainer.phi)


def test_in_actor_rounds_give_the_split_rounds_phi_and_the_same_records(tmp_path: Path) -> None:
    """Whole rounds in the actor, many per call, end each call at the next evaluation or
    checkpoint: φ, metrics' steps, evaluations and checkpoints are those of split rounds."""
    spec = SPEC.model_copy(update={"outer_optimizer": "adam", "outer_lr": 0.01})
    split_sink = RecordingSink()
    split = MetaTrainer(spec, InProcessRunner(spec), split_sink, tmp_path / "a")
    assert split.run() is True
    in_actor = spec.model_copy(update={"execution": "in_actor"})
    runner, sink, progress = InProcessRunner(in_actor), RecordingSink(), list[Progress]()
    trainer = MetaTrainer(
        in_actor, runner, sink, tmp_path / "b.safetensors", on_progress=progress.append
    )
    assert trainer.run() is True
    assert runner.rounds == 0  # no split round
    # the first call has no timing yet (one round); the others end at round 2, 3, 4 and 6
    assert runner.calls == [range(0, 1), range(1, 2), range(2, 3), range(3, 4), range(4, 6)]
    assert all(torch.equal(trainer.phi[n], split.phi[n]) for n in split.phi)
    assert [s for s, _ in sink.metrics] == [s for s, _ in split_sink.metrics]
    assert [p.round for p in progress] == [0, 1, 2, 3, 4, 5, 6]
    assert [p.checkpoint_round for p in progress if p.checkpoint_round] == [2, 4, 6]
    assert [p.round for p in progress if p.evaluation] == [0, 3, 6]
    assert sink.tags["execution"] == "in_actor (requested)"
    assert runner.kept == 1


def test_auto_times_both_plans_in_turns_then_keeps_one(tmp_path: Path) -> None:
    spec = SPEC.model_copy(
        update={"execution": "auto", "rounds": 60, "eval_every": 0, "checkpoint_every": 10}
    )
    runner, sink = InProcessRunner(spec), RecordingSink()
    trainer = MetaTrainer(spec, runner, sink, tmp_path / "c", on_progress=lambda p: None)
    assert trainer.run() is True
    split = spec.model_copy(update={"execution": "split"})
    reference = MetaTrainer(split, InProcessRunner(split), RecordingSink(), tmp_path / "d")
    reference.run()
    assert all(torch.allclose(trainer.phi[n], reference.phi[n], atol=1e-6) for n in trainer.phi)
    chosen = sink.tags["execution"]
    assert chosen.startswith(("split (auto: split ", "in_actor (auto: split ")), chosen
    assert "ms/round, in_actor " in chosen
    # 2 untimed split rounds, then turns of 8 rounds: split 2–9, in_actor 10–17, split 18–25,
    # in_actor 26–33 (in calls that end at the checkpoint of round 30), split 34–41, in_actor
    # 42–49; then the chosen plan
    probes = [range(10, 18), range(26, 30), range(30, 34), range(42, 50)]
    assert runner.calls[:4] == probes
    if chosen.startswith("split"):
        assert runner.calls == probes and runner.rounds == 26 + 10 and runner.kept is None
    else:
        assert runner.rounds == 26 and runner.kept == 1
    assert [s for s, m in sink.metrics if "epsilon" in m] == list(range(1, 61))


def test_a_one_worker_job_runs_in_its_actor_from_the_first_round(tmp_path: Path) -> None:
    spec = SPEC.model_copy(update={"execution": "auto", "num_workers": 1})
    runner, sink = InProcessRunner(spec), RecordingSink()
    assert MetaTrainer(spec, runner, sink, tmp_path / "e").run() is True
    assert runner.rounds == 0 and runner.calls[0] == range(0, 1)
    assert sink.tags["execution"] == "in_actor (auto: one worker)"


def test_divergence_in_the_actor_keeps_the_rounds_before_it(tmp_path: Path) -> None:
    """A job that diverges in round 3, in its second call: the actor stops at the first
    non-finite update and returns the φ before it, which the failing job checkpoints."""
    spec = SineJobSpec(
        rounds=50,
        inner_lr=1.0,
        outer_optimizer="sgd",
        outer_lr=1.0,
        eval_every=0,
        checkpoint_every=1000,
        execution="in_actor",
    )
    seen: list[Progress] = []
    trainer = MetaTrainer(spec, InProcessRunner(spec), RecordingSink(), tmp_path / "f")
    trainer.on_progress = seen.append
    with pytest.raises(Divergence, match="non-finite in round 3; φ kept from round 2"):
        trainer.run()
    assert all(bool(torch.isfinite(t).all()) for t in trainer.phi.values())
    assert seen[-1].round == trainer.round == 2
    checkpoint = read_checkpoint(tmp_path / "f")
    assert checkpoint.round == 2
    assert all(torch.equal(checkpoint.phi[n], trainer.phi[n]) for n in trainer.phi)
