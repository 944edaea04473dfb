"""Weights and checkpoints on disk: round trips, atomic replacement, clear corruption errors."""

from pathlib import Path

import pytest
import torch

from reptile.meta import MetaOptimizer
from reptile.params import init_params
from reptile.tasks.sine import SineFamily
from service.weights import (
    Checkpoint,
    CorruptCheckpoint,
    read_checkpoint,
    read_weights,
    write_checkpoint,
    write_weights,
)


def test_weights_round_trip(tmp_path: Path) -> None:
    phi = init_params(SineFamily().make_model(), 0)
    write_weights(tmp_path / "w.safetensors", phi)
    loaded = read_weights(tmp_path / "w.safetensors")
    assert loaded.keys() == phi.keys()
    assert all(torch.equal(loaded[n], phi[n]) for n in phi)
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temp files left


def test_checkpoint_restores_outer_adam_exactly(tmp_path: Path) -> None:
    phi = init_params(SineFamily().make_model(), 0)
    meta = MetaOptimizer(phi, "adam")
    meta.step({n: torch.ones_like(t) for n, t in phi.items()}, lr=0.1)
    path = tmp_path / "checkpoint.safetensors"
    write_checkpoint(path, Checkpoint(7, meta.phi, meta.state_dict(), [{"round": 5.0}]))
    restored = read_checkpoint(path)
    assert restored.round == 7 and restored.history == [{"round": 5.0}]
    again = MetaOptimizer(restored.phi, "adam")
    again.load_state_dict(restored.optimizer_state)
    step = {n: torch.full_like(t, 0.5) for n, t in phi.items()}
    meta.step(step, lr=0.1)
    again.step(step, lr=0.1)
    assert all(torch.equal(meta.phi[n], again.phi[n]) for n in phi)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint.safetensors"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(CorruptCheckpoint, match="unreadable"):
        read_checkpoint(path)
    write_weights(path, {"w": torch.zeros(2)})  # valid safetensors, but not a checkpoint
    with pytest.raises(CorruptCheckpoint, match="not a reptile-checkpoint"):
        read_checkpoint(path)
