"""The inner-loop actor: a thin, stateless shell around `reptile.algorithms.run_chunk` (a chunk
of one round's tasks, as the job's algorithm turns them into meta-gradients) and
`reptile.rounds.run_rounds` (whole rounds, the meta-update included).

It holds only what can be rebuilt at any time (the task family, a model skeleton and the inner
step of each inner configuration it has run, compiled once where the job asks), so a restarted
actor loses nothing. On a GPU actor the inner loops run on `cuda`; what goes in and
out is numpy on the CPU either way, so the controller never sees a device.

A call and its result each cross Ray as one pickled `bytes` (`pack`): Ray's serialiser charges
each argument and each numpy array on its own, far more than one plain pickle of a whole call,
and those round trips are most of a small round's overhead. Only a large φ goes as Ray's own
argument, from the object store.
"""

import json
import os
import pickle
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import ray
import torch
from torch import nn

from reptile.algorithms import DEFAULT_ALGORITHM, AlgorithmConfig, run_chunk
from reptile.evaluate import held_out_accuracies
from reptile.inner import InnerConfig, InnerStep, batched_step
from reptile.meta import MetaConfig, MetaOptimizer
from reptile.params import from_numpy, to_numpy
from reptile.rounds import run_rounds
from reptile.tasks import make_family
from reptile.tasks.fewshot import FewShotFamily, with_ways
from workers.memory import keep_freed_memory

T = TypeVar("T")

HELD_OUT_FAMILIES = 8  # held-out families (and models) an actor keeps built


def pack(value: object) -> bytes:
    """`value` as one plain pickle, for Ray to carry as a single opaque argument or result."""
    return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)


def unpack(data: bytes, kind: type[T]) -> T:
    """The `kind` that `pack` turned into `data` (the caller's or the actor's own, never a
    user's: pickles are only read between the processes of one Ray cluster, as Ray's are)."""
    value = pickle.loads(data)
    if not isinstance(value, kind):
        raise TypeError(f"expected a packed {kind.__name__}, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class ChunkRequest:
    """One chunk's call: the seeds of its tasks, how to learn them (`config`; `compile`: with
    a compiled step), and φ when it is small enough to travel inline (a large φ comes from the
    object store, as `run_chunk`'s own argument); `algorithm` turns each task into its d_i."""

    seeds: np.ndarray  # uint64, one buffer rather than a Python int per task
    config: InnerConfig
    phi: dict[str, np.ndarray] | None = None
    compile: bool = False
    algorithm: AlgorithmConfig = DEFAULT_ALGORITHM


@dataclass(frozen=True)
class ChunkOutput:
    """A chunk's result in numpy form, on the CPU; `run_chunk` returns it packed."""

    delta_sum: dict[str, np.ndarray]  # Σ_i d_i = −Σ_i g_i (`reptile.meta`)
    count: int
    loss_before: np.ndarray  # (count,)
    loss_after: np.ndarray  # (count,)
    compute_seconds: float
    node_id: str  # the Ray node that ran the chunk


@dataclass(frozen=True)
class RoundsRequest:
    """Whole rounds `start` … `stop − 1` of the job of `seed`, from φ and the outer optimiser's
    state at `start` (what the controller holds), the meta-update applied in the actor."""

    seed: int
    start: int
    stop: int
    config: MetaConfig
    phi: dict[str, np.ndarray]
    optimizer_state: dict[str, Any]
    compile: bool = False


@dataclass(frozen=True)
class RoundsOutput:
    """φ and the optimiser state after the rounds completed, with their per-round numbers."""

    phi: dict[str, np.ndarray]
    optimizer_state: dict[str, Any]
    completed: int
    diverged: bool  # round start + completed was not finite (φ is that of the round before)
    loss_before: np.ndarray  # (completed, meta_batch_size)
    loss_after: np.ndarray  # (completed, meta_batch_size)
    epsilons: list[float]
    compute_seconds: list[float]
    node_id: str


@dataclass(frozen=True)
class HeldOutRequest:
    """One chunk of a held-out evaluation: tasks of `seeds` from the family of `family` (options
    of the actor's task family: the held-out split, any ways, shots, data set or groups),
    adapted as `config` says and classified `transductive`ly or not; φ as in `ChunkRequest`,
    its head fitted to the family's ways (`with_ways`)."""

    seeds: np.ndarray  # uint64
    family: dict[str, Any]
    config: InnerConfig
    transductive: bool
    phi: dict[str, np.ndarray] | None = None


@dataclass(frozen=True)
class HeldOutOutput:
    accuracies: np.ndarray  # (count,) in seed order
    node_id: str


def _phi_of(
    inline: dict[str, np.ndarray] | None, stored: dict[str, np.ndarray] | None
) -> dict[str, np.ndarray]:
    """φ from a request (small φ) or from the call's object-store argument (large φ)."""
    phi = inline if inline is not None else stored
    if phi is None:
        raise ValueError("a chunk request without φ needs it as the second argument")
    return phi


def _on_cpu(state: dict[str, Any]) -> dict[str, Any]:
    """An optimiser state dict with its tensors on the CPU (a GPU actor's go back to the
    controller, which has no device)."""
    return {
        "param_groups": state["param_groups"],
        "state": {
            index: {key: value.cpu() for key, value in values.items()}
            for index, values in state["state"].items()
        },
    }


class InnerLoopWorker:
    """Runs the inner loops of chunks of tasks, and scores chunks of held-out tasks; one call
    per chunk, tasks rebuilt from seeds."""

    def __init__(
        self, task: str, task_options: dict[str, Any], device: str = "cpu", num_threads: int = 1
    ) -> None:
        # One intra-op thread per actor: N actors on N cores must not oversubscribe them.
        torch.set_num_threads(num_threads)
        keep_freed_memory()  # the inner loops' buffers, reused from step to step
        self.device = torch.device(device)
        self.task, self.task_options = task, task_options
        self.family = make_family(task, **task_options)
        self.model = self.family.make_model().to(self.device)
        # outside Ray (a unit test, a notebook) there is no node, and asking would start Ray
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self.steps: dict[tuple[InnerConfig, bool], InnerStep] = {}  # by (config, compile)
        # held-out families and their models, by options (JSON), the latest few
        self.held_out: dict[str, tuple[FewShotFamily, nn.Module]] = {}

    def run_chunk(self, request: bytes, stored_phi: dict[str, np.ndarray] | None = None) -> bytes:
        """Run the algorithm of a packed `ChunkRequest` on its tasks; returns a packed
        `ChunkOutput`.

        φ is the request's own, or else `stored_phi` (an object-store argument, zero-copy).
        """
        start = time.perf_counter()
        call = unpack(request, ChunkRequest)
        phi = _phi_of(call.phi, stored_phi)
        result = run_chunk(
            call.algorithm,
            self.family,
            self.model,
            from_numpy(phi),
            call.seeds.tolist(),
            call.config,
            self.device,
            self._step(call.config, call.compile),
        )
        output = ChunkOutput(
            delta_sum=to_numpy(result.delta_sum),
            count=result.count,
            loss_before=result.loss_before.cpu().numpy(),
            loss_after=result.loss_after.cpu().numpy(),
            compute_seconds=time.perf_counter() - start,
            node_id=self.node_id,
        )
        return pack(output)

    def run_rounds(self, request: bytes) -> bytes:
        """Run the whole rounds of a packed `RoundsRequest`; returns a packed `RoundsOutput`."""
        call = unpack(request, RoundsRequest)
        phi = {name: tensor.to(self.device) for name, tensor in from_numpy(call.phi).items()}
        meta = MetaOptimizer(phi, call.config.outer_optimizer)
        meta.load_state_dict(call.optimizer_state)
        result = run_rounds(
            self.family,
            self.model,
            meta,
            call.config,
            call.seed,
            range(call.start, call.stop),
            self.device,
            self._step(call.config.inner, call.compile),
        )
        output = RoundsOutput(
            phi=to_numpy(meta.phi),
            optimizer_state=_on_cpu(meta.state_dict()),
            completed=result.completed,
            diverged=result.diverged,
            loss_before=result.loss_before.numpy(),
            loss_after=result.loss_after.numpy(),
            epsilons=result.epsilons,
            compute_seconds=result.compute_seconds,
            node_id=self.node_id,
        )
        return pack(output)

    def _step(self, config: InnerConfig, compile: bool) -> InnerStep:
        """The inner step of `config`, built (and compiled, where asked) on first use, once."""
        key = (config, compile)
        if key not in self.steps:
            self.steps[key] = batched_step(self.family, self.model, config, compile=compile)
        return self.steps[key]

    def score_held_out(
        self, request: bytes, stored_phi: dict[str, np.ndarray] | None = None
    ) -> bytes:
        """Adapt φ to each held-out task of a packed `HeldOutRequest` and score it; returns a
        packed `HeldOutOutput`. An image family's held-out classes (its "test" split) only."""
        call = unpack(request, HeldOutRequest)
        phi = _phi_of(call.phi, stored_phi)
        key = json.dumps(call.family, sort_keys=True)
        if key not in self.held_out:
            if len(self.held_out) >= HELD_OUT_FAMILIES:  # the oldest goes
                del self.held_out[next(iter(self.held_out))]
            family = make_family(self.task, **call.family)
            assert isinstance(family, FewShotFamily), "held-out tasks of an image family only"
            self.held_out[key] = family, family.make_model().to(self.device)
        family, model = self.held_out[key]
        accuracies = held_out_accuracies(
            family,
            model,
            with_ways(from_numpy(phi), family.ways),
            call.seeds.tolist(),
            call.config,
            transductive=call.transductive,
            device=self.device,
        )
        return pack(HeldOutOutput(np.array(accuracies), self.node_id))

    def pid(self) -> int:
        """The actor's process id (to watch or kill it in tests and operations)."""
        return os.getpid()

    def peak_rss_bytes(self) -> int:
        """The actor process's peak resident memory so far (to size actors)."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
