"""The pool of inner-loop actors that runs one meta-training round at a time.

The only module that knows Ray's actor API. A round puts φ in the object store once (or inline
in the calls when it is small), gives each actor one contiguous chunk of the round's seeds,
waits with a deadline, re-runs a failed or late chunk on a fresh actor, and sums the chunks'
deltas in chunk order. An actor's start-up (torch, data) is never charged to a round's deadline:
it has a deadline of its own. A job whose rounds are not worth splitting runs whole rounds on one
actor instead, many per call (`run_rounds`), and can give its other actors back (`keep`).
Actors are spread over the cluster's nodes, and the pool remembers which nodes ran its chunks.
An image job's held-out evaluation is split over the actors the same way: its adaptations are
as costly as a round (Conv4, 50 steps a task).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayError
from ray.util import get_current_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from reptile.algorithms import DEFAULT_ALGORITHM, AlgorithmConfig
from reptile.inner import InnerConfig
from reptile.params import Params, from_numpy, to_numpy, total
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
from workers.cluster import shortfall

log = logging.getLogger(__name__)

# Ray's own limit for arguments passed by value (RAY_max_direct_call_object_size)
INLINE_PHI_BYTES = 100 * 1024
# how often a pool whose actors are starting checks whether its job was stopped
STOP_POLL_S = 0.5


class PoolError(RuntimeError):
    """A round could not be completed: a chunk failed on every try, or no actor could start."""


@dataclass(frozen=True)
class RoundOutput:
    """The gathered result of one round."""

    delta_sum: Params  # Σ_i d_i over all tasks of the round (for Reptile Σ_i (W_i − φ))
    count: int
    loss_before: np.ndarray  # (count,) in seed order
    loss_after: np.ndarray  # (count,) in seed order
    compute_seconds: float  # the slowest chunk's inner-loop time
    work_seconds: float  # all chunks' inner-loop time: what one actor alone would spend


def split(seeds: list[int], parts: int) -> list[list[int]]:
    """Contiguous chunks of near-equal size, in order (empty chunks dropped)."""
    size, extra = divmod(len(seeds), parts)
    chunks, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        chunks.append(seeds[start:end])
        start = end
    return [chunk for chunk in chunks if chunk]


class WorkerPool:
    """`num_workers` stateless actors for one job's task family, each on `num_cpus` CPUs and,
    when `num_gpus` > 0, that much of a GPU (the inner loops then run on it).

    Construction waits for the actors to start, unless `should_stop()` turns true first: the
    pool is then returned unstarted, for the caller to see its stop and shut it down.
    """

    def __init__(
        self,
        *,
        task: str,
        task_options: dict[str, Any],
        num_workers: int,
        round_timeout_s: float = 300.0,
        start_timeout_s: float = 300.0,
        chunk_retries: int = 2,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        should_stop: Callable[[], bool] = lambda: False,
    ) -> None:
        if problem := shortfall(num_workers, num_cpus, num_gpus):
            raise PoolError(problem)
        # SPREAD: actors go to different nodes where they fit, so a job uses the cluster's
        # cores rather than packing onto the first node (no effect on a single machine). A
        # sweep trial's pool goes into the placement group Tune reserved for the trial.
        # Ray sets each GPU actor's CUDA_VISIBLE_DEVICES, so "cuda" is the GPU it was given.
        group = get_current_placement_group()
        strategy = PlacementGroupSchedulingStrategy(group) if group is not None else "SPREAD"
        self._remote = ray.remote(InnerLoopWorker).options(
            num_cpus=num_cpus, num_gpus=num_gpus, scheduling_strategy=strategy
        )
        self._init_args = (task, task_options, "cuda" if num_gpus else "cpu")
        self._round_timeout_s = round_timeout_s
        self._start_timeout_s = start_timeout_s
        self._chunk_retries = chunk_retries
        self.actors = [self._new_actor() for _ in range(num_workers)]
        self.node_ids: set[str] = set()  # the Ray nodes that have run this pool's chunks
        try:
            self._wait_started(should_stop)
        except (RayError, GetTimeoutError) as error:
            self.shutdown()
            raise PoolError(
                f"the workers did not start within {start_timeout_s:g}s: {error}"
            ) from error

    def _wait_started(self, should_stop: Callable[[], bool]) -> None:
        """Wait until every actor has started, or until `should_stop()`: a job stopped while
        its actors start (a cancel, a shutdown) then stops at once, not after the start-up."""
        deadline = time.monotonic() + self._start_timeout_s
        starting = [actor.pid.remote() for actor in self.actors]
        while starting and not should_stop():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise GetTimeoutError(f"{len(starting)} of {len(self.actors)} still starting")
            started, starting = ray.wait(
                starting, num_returns=len(starting), timeout=min(remaining, STOP_POLL_S)
            )
            ray.get(started)  # raises for an actor that failed to start

    def _new_actor(self) -> Any:
        return self._remote.remote(*self._init_args)

    def _replace(self, slot: int) -> Any:
        """Kill the actor in `slot` (dead, failed or hung) and start a fresh one there."""
        ray.kill(self.actors[slot], no_restart=True)
        self.actors[slot] = self._new_actor()
        return self.actors[slot]

    def run_round(
        self,
        phi: Params,
        seeds: list[int],
        config: InnerConfig,
        *,
        compile: bool = False,
        algorithm: AlgorithmConfig = DEFAULT_ALGORITHM,
    ) -> RoundOutput:
        """Run every task of `seeds` from φ as `config` says (`compile`: each actor compiles
        its step, once) and return `algorithm`'s Σ_i d_i with per-task losses."""
        inline, stored = self._phi_args(phi)
        requests = [
            pack(ChunkRequest(np.array(chunk, np.uint64), config, inline, compile, algorithm))
            for chunk in split(seeds, len(self.actors))
        ]
        outputs = [unpack(r, ChunkOutput) for r in self._run_chunks("run_chunk", requests, stored)]
        self.node_ids.update(o.node_id for o in outputs)
        return RoundOutput(
            delta_sum=total(from_numpy(o.delta_sum) for o in outputs),
            count=sum(o.count for o in outputs),
            loss_before=np.concatenate([o.loss_before for o in outputs]),
            loss_after=np.concatenate([o.loss_after for o in outputs]),
            compute_seconds=max(o.compute_seconds for o in outputs),
            work_seconds=sum(o.compute_seconds for o in outputs),
        )

    def run_rounds(self, request: RoundsRequest) -> RoundsOutput:
        """Run the whole rounds of `request` on the first actor, from its φ and outer
        optimiser state, the meta-update applied there; a failed or late call runs again from
        the same φ on a fresh actor. The rounds must fit the round deadline."""
        (result,) = self._run_chunks("run_rounds", [pack(request)], ())
        output = unpack(result, RoundsOutput)
        self.node_ids.add(output.node_id)
        return output

    def keep(self, count: int) -> None:
        """Give back all actors but the first `count` (their CPUs go to other jobs)."""
        for actor in self.actors[count:]:
            ray.kill(actor, no_restart=True)
        del self.actors[count:]

    def score_held_out(
        self,
        phi: Params,
        seeds: list[int],
        family: dict[str, Any],
        config: InnerConfig,
        transductive: bool,
    ) -> list[float]:
        """The accuracy after adapting as `config` says of each held-out task of `seeds` (tasks
        of the family of options `family`; `transductive`: see `reptile.evaluate.classify`), in
        seed order: an image job's evaluation, split over the actors like a round.

        Its chunks run under the round's deadline: callers bound a call's work as the spec
        bounds a round's (`max_work`, `eval_batches`).
        """
        inline, stored = self._phi_args(phi)
        requests = [
            pack(HeldOutRequest(np.array(chunk, np.uint64), family, config, transductive, inline))
            for chunk in split(seeds, len(self.actors))
        ]
        outputs = [
            unpack(r, HeldOutOutput) for r in self._run_chunks("score_held_out", requests, stored)
        ]
        self.node_ids.update(o.node_id for o in outputs)
        return np.concatenate([o.accuracies for o in outputs]).tolist()

    def _phi_args(self, phi: Params) -> tuple[dict[str, np.ndarray] | None, tuple[Any, ...]]:
        """φ for the requests and the calls' extra arguments: a small φ rides inline in each
        request (no extra argument), a large one goes as its object-store reference.

        A large φ is put in the object store once per round, read zero-copy by every actor; a
        small one rides inline as Ray does with small arguments, skipping two object-store round
        trips.
        """
        arrays = to_numpy(phi)
        if sum(array.nbytes for array in arrays.values()) <= INLINE_PHI_BYTES:
            return arrays, ()
        return None, (ray.put(arrays),)

    def _run_chunks(
        self, method: str, requests: list[bytes], stored_phi: tuple[Any, ...]
    ) -> list[bytes]:
        """Call `method` with `requests[i]` on actor i, all at once, and return the results in
        order; a chunk that fails or passes its deadline runs again on a fresh actor."""
        results: list[bytes | None] = [None] * len(requests)
        pending: dict[Any, tuple[int, int, float]] = {}  # ref -> (chunk, attempt, deadline)

        def submit(index: int, attempt: int, actor: Any, allowance: float = 0.0) -> None:
            deadline = time.monotonic() + allowance + self._round_timeout_s
            ref = getattr(actor, method).remote(requests[index], *stored_phi)
            pending[ref] = (index, attempt, deadline)

        for index in range(len(requests)):
            submit(index, 0, self.actors[index])
        while pending:
            first_deadline = min(deadline for _, _, deadline in pending.values())
            timeout = max(0.0, first_deadline - time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout)
            now = time.monotonic()
            late = [ref for ref, (_, _, deadline) in pending.items() if deadline <= now]
            for ref in dict.fromkeys(ready + late):  # a late chunk's get fails: it is retried
                index, attempt, _ = pending.pop(ref)
                try:
                    results[index] = ray.get(ref, timeout=0)
                except (RayError, GetTimeoutError) as error:
                    if attempt >= self._chunk_retries:
                        raise PoolError(
                            f"{method} of chunk {index} failed {attempt + 1} times: {error}"
                        ) from error
                    log.warning("chunk %d failed (%s); retrying on a fresh actor", index, error)
                    # a fresh actor first has to start: that time is not the chunk's
                    submit(index, attempt + 1, self._replace(index), self._start_timeout_s)
        return [r for r in results if r is not None]

    def peak_rss_bytes(self) -> list[int]:
        """Each actor's peak resident memory so far, in slot order."""
        refs = [actor.peak_rss_bytes.remote() for actor in self.actors]
        return [int(peak) for peak in ray.get(refs, timeout=self._round_timeout_s)]

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
