"""The inner-loop actor: a thin, stateless shell around `reptile.inner.run_tasks`.

It holds only what can be rebuilt at any time (the task family, a model skeleton and the inner
step of each inner configuration it has run, compiled once where the job asks), so a restarted
actor loses nothing. On a GPU actor the inner loops run on `cuda`; what goes in and
out is numpy on the CPU either way, so the controller never sees a device.
"""

import os
import resource
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import torch

from reptile.inner import InnerConfig, InnerStep, chunk_step, run_tasks
from reptile.params import from_numpy, to_numpy
from reptile.tasks import make_family
from workers.memory import keep_freed_memory


@dataclass(frozen=True)
class ChunkOutput:
    """A chunk's result in numpy form, cheap to move through the object store."""

    delta_sum: dict[str, np.ndarray]
    count: int
    loss_before: np.ndarray  # (count,)
    loss_after: np.ndarray  # (count,)
    compute_seconds: float
    node_id: str  # the Ray node that ran the chunk


class InnerLoopWorker:
    """Runs the inner loops of chunks of tasks; one call per chunk, tasks rebuilt from seeds."""

    def __init__(
        self, task: str, task_options: dict[str, Any], device: str = "cpu", num_threads: int = 1
    ) -> None:
        # One intra-op thread per actor: N actors on N cores must not oversubscribe them.
        torch.set_num_threads(num_threads)
        keep_freed_memory()  # the inner loops' buffers, reused from step to step
        self.device = torch.device(device)
        self.family = make_family(task, **task_options)
        self.model = self.family.make_model().to(self.device)
        # outside Ray (a unit test, a notebook) there is no node, and asking would start Ray
        self.node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""
        self.steps: dict[InnerConfig, InnerStep] = {}

    def run_chunk(
        self, phi: dict[str, np.ndarray], seeds: np.ndarray, inner: InnerConfig
    ) -> ChunkOutput:
        """Adapt φ to the tasks of `seeds` (uint64: one buffer, not a Python int per task)."""
        start = time.perf_counter()
        if inner not in self.steps:  # a compiled step compiles on its first chunk, once
            self.steps[inner] = chunk_step(self.family, self.model, inner)
        result = run_tasks(
            self.family,
            self.model,
            from_numpy(phi),
            seeds.tolist(),
            inner,
            self.device,
            self.steps[inner],
        )
        return ChunkOutput(
            delta_sum=to_numpy(result.delta_sum),
            count=result.count,
            loss_before=result.loss_before.cpu().numpy(),
            loss_after=result.loss_after.cpu().numpy(),
            compute_seconds=time.perf_counter() - start,
            node_id=self.node_id,
        )

    def pid(self) -> int:
        """The actor's process id (to watch or kill it in tests and operations)."""
        return os.getpid()

    def peak_rss_bytes(self) -> int:
        """The actor process's peak resident memory so far (to size actors)."""
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux
