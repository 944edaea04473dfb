"""Meta-weights and checkpoints on disk (safetensors), written atomically.

A checkpoint is one self-describing safetensors file: φ under `phi.*`, the outer optimiser's
state as a `torch.save` blob, and JSON metadata (format, round, evaluation history).
"""

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save

from reptile.params import Params
from service.files import atomic_write

CHECKPOINT_FORMAT = "reptile-checkpoint/1"
_PHI = "phi."
_OPTIMIZER = "optimizer_state"


class CorruptCheckpoint(RuntimeError):
    """A checkpoint file that cannot be read back."""


def weights_to_bytes(params: Params, metadata: dict[str, str] | None = None) -> bytes:
    return save({n: t.detach().contiguous() for n, t in params.items()}, metadata=metadata)


def weights_from_bytes(data: bytes) -> Params:
    return load(data)


def write_weights(path: Path, params: Params) -> None:
    atomic_write(path, weights_to_bytes(params))


def read_weights(path: Path) -> Params:
    return weights_from_bytes(path.read_bytes())


@dataclass
class Checkpoint:
    """Everything needed to continue a job exactly: the next round, φ, outer optimiser state."""

    round: int
    phi: Params
    optimizer_state: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)  # evaluation rows so far


def write_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    buffer = io.BytesIO()
    torch.save(checkpoint.optimizer_state, buffer)
    tensors = {_PHI + n: t.detach().contiguous() for n, t in checkpoint.phi.items()}
    tensors[_OPTIMIZER] = torch.frombuffer(bytearray(buffer.getvalue()), dtype=torch.uint8)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "round": str(checkpoint.round),
        "history": json.dumps(checkpoint.history),
    }
    atomic_write(path, save(tensors, metadata=metadata))


def read_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint; raise `CorruptCheckpoint` with the reason when it is unreadable."""
    try:
        with safe_open(path, framework="pt") as file:
            metadata = file.metadata() or {}
            if metadata.get("format") != CHECKPOINT_FORMAT:
                raise CorruptCheckpoint(f"checkpoint {path} is not a {CHECKPOINT_FORMAT} file")
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
        blob = tensors.pop(_OPTIMIZER).numpy().tobytes()
        return Checkpoint(
            round=int(metadata["round"]),
            phi={n.removeprefix(_PHI): t for n, t in tensors.items()},
            optimizer_state=torch.load(io.BytesIO(blob), weights_only=True),
            history=json.loads(metadata["history"]),
        )
    except CorruptCheckpoint:
        raise
    except (OSError, SafetensorError, KeyError, ValueError, RuntimeError) as error:
        raise CorruptCheckpoint(f"checkpoint {path} is unreadable: {error}") from error
