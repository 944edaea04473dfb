"""The trainer's collaborators for the in-process ("vectorised") path: an inner-loop worker
called directly, without Ray, and a sink that keeps nothing.

The one module of the bench that names the inner loop's config type.
"""

from typing import Any

import numpy as np
import torch

from reptile.algorithms import DEFAULT_ALGORITHM, AlgorithmConfig
from reptile.inner import InnerConfig
from reptile.params import Params, from_numpy, to_numpy
from service.plots import Drawing
from workers.actor import (
    ChunkOutput,
    ChunkRequest,
    HeldOutOutput,
    HeldOutRequest,
    InnerLoopWorker,
    RoundsOutput,
    RoundsRequest,
    pack,
    unpack,
)
from workers.pool import RoundOutput


class InProcessRunner:
    """A `RoundRunner` that runs each round as one chunk on an `InnerLoopWorker` in this
    process, on this process's torch threads: the actors' own code (and packing), no Ray.

    Raises ValueError when the family cannot take `task_options` (e.g. a batching mode its
    model does not support).
    """

    def __init__(self, task: str, task_options: dict[str, Any]) -> None:
        self.worker = InnerLoopWorker(task, task_options, num_threads=torch.get_num_threads())

    @property
    def batching(self) -> str:
        return self.worker.family.batching

    def run_round(
        self,
        phi: Params,
        seeds: list[int],
        config: InnerConfig,
        *,
        compile: bool = False,
        algorithm: AlgorithmConfig = DEFAULT_ALGORITHM,
    ) -> RoundOutput:
        request = ChunkRequest(
            np.array(seeds, np.uint64), config, to_numpy(phi), compile, algorithm
        )
        output = unpack(self.worker.run_chunk(pack(request)), ChunkOutput)
        return RoundOutput(
            delta_sum=from_numpy(output.delta_sum),
            count=output.count,
            loss_before=output.loss_before,
            loss_after=output.loss_after,
            compute_seconds=output.compute_seconds,
            work_seconds=output.compute_seconds,
        )

    def run_rounds(self, request: RoundsRequest) -> RoundsOutput:
        return unpack(self.worker.run_rounds(pack(request)), RoundsOutput)

    def keep(self, count: int) -> None:
        pass  # one worker, this process

    def score_held_out(
        self,
        phi: Params,
        seeds: list[int],
        family: dict[str, Any],
        config: InnerConfig,
        transductive: bool,
    ) -> list[float]:
        request = HeldOutRequest(
            np.array(seeds, np.uint64), family, config, transductive, to_numpy(phi)
        )
        output = unpack(self.worker.score_held_out(pack(request)), HeldOutOutput)
        return list(output.accuracies.tolist())


class NullSink:
    """A `MetricsSink` that drops everything: the in-process path logs nothing."""

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def log_artifact(self, data: bytes, artifact_path: str) -> None:
        pass

    def log_figure(self, draw: Drawing, artifact_path: str) -> None:
        pass

    def set_tag(self, key: str, value: str) -> None:
        pass
