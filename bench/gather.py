"""`python -m bench.gather`: what a round costs the controller as actors are added, measured on a
two-node local Ray cluster and extrapolated by a fitted model to 10, 100 and 1000 actors.

Two ways to combine a round's Σ(W_i − φ) of Conv4 (112,005 floats, 450 KB):
- gather (what `WorkerPool.run_round` does): the controller puts φ in the object store, each
  actor returns its packed delta, and the controller unpickles and sums them in order: its time
  grows with the number of actors, t(n) = a + b·n.
- collective (`ray.util.collective`, gloo over TCP; NCCL on GPUs): actors holding φ replicas
  all-reduce their deltas among themselves and every replica applies the same update; the
  controller leaves the round's critical path. A ring all-reduce costs
  t(n) = 2(n − 1)·α + 2(n − 1)/n · S/β (α: per-message latency, β: bandwidth, S: bytes).

The actors here do no inner loops: only the combining is timed. On this 2-core machine many
actors share two cores, so the measured latencies are upper bounds of what one core per actor
gives; the fit says so by its residuals.
"""

import argparse
import json
import logging
import os
import pickle
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import ray
import torch
from ray.util import collective
from ray.util.collective.types import Backend

from reptile.models import Conv4
from tests.utils.topology import ray_cluster

COUNTS = (1, 2, 4, 8, 16)
EXTRAPOLATE = (10, 100, 1000)


def conv4_arrays() -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() for n, p in Conv4(ways=5).named_parameters()}


class Replica:
    """An actor with a Conv4-sized delta: returns it packed (gather) or all-reduces it."""

    def __init__(self) -> None:
        torch.set_num_threads(1)
        self.delta = conv4_arrays()
        self.flat = torch.cat([torch.from_numpy(a).flatten() for a in self.delta.values()])

    def chunk(self, request: bytes, phi: dict[str, np.ndarray]) -> bytes:
        """The shape of `run_chunk`'s traffic: φ in from the object store, Σ(W_i − φ) out."""
        return pickle.dumps(
            {name: phi[name] + array for name, array in self.delta.items()}, protocol=5
        )

    def join(self, world: int, rank: int, group: str) -> None:
        collective.init_collective_group(
            world, rank, backend=cast(Backend, Backend.GLOO), group_name=group
        )

    def allreduce(self, repeats: int, group: str) -> list[float]:
        times = []
        for _ in range(repeats):
            buffer = self.flat.clone()
            started = time.perf_counter()
            collective.allreduce(buffer, group_name=group)
            times.append(time.perf_counter() - started)
        return times


def gather_round(actors: list[Any], phi: dict[str, np.ndarray]) -> float:
    """One round's combining as the controller does it; its seconds."""
    started = time.perf_counter()
    stored = ray.put(phi)
    outputs = ray.get([actor.chunk.remote(b"", stored) for actor in actors])
    total = None
    for output in outputs:
        delta = pickle.loads(output)
        if total is None:
            total = {n: a.copy() for n, a in delta.items()}
        else:
            for name in total:
                total[name] += delta[name]
    return time.perf_counter() - started


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least squares y = a + b·x."""
    b, a = np.polyfit(np.array(xs, float), np.array(ys, float), 1)
    return float(a), float(b)


def fit_ring(counts: list[int], seconds: list[float], size: int) -> tuple[float, float]:
    """Least squares of the ring model: (α seconds per message, β bytes per second)."""
    design = np.array([[2 * (n - 1), 2 * (n - 1) / n * size] for n in counts], float)
    (alpha, inverse_beta), *_ = np.linalg.lstsq(design, np.array(seconds), rcond=None)
    return float(alpha), float(1 / inverse_beta) if inverse_beta > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gather", description=__doc__)
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per actor count")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    phi = conv4_arrays()
    size = sum(a.nbytes for a in phi.values())
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    per_node = max(COUNTS) // 2 + 1
    gather: dict[int, float] = {}
    ring: dict[int, float] = {}
    with ray_cluster(Path(tempfile.mkdtemp(prefix="reptile-gather-")), env, per_node) as (
        address,
        nodes,
    ):
        ray.init(address=address, logging_level=logging.ERROR)
        try:
            remote: Any = ray.remote(Replica).options(num_cpus=1, scheduling_strategy="SPREAD")
            for count in COUNTS:
                actors = [remote.remote() for _ in range(count)]
                for _ in range(3):  # first calls: connections, object-store mappings
                    gather_round(actors, phi)
                gather[count] = statistics.median(
                    gather_round(actors, phi) for _ in range(args.rounds)
                )
                if count > 1:
                    group = f"ring{count}"
                    ray.get([a.join.remote(count, r, group) for r, a in enumerate(actors)])
                    times = ray.get([a.allreduce.remote(args.rounds + 3, group) for a in actors])
                    ring[count] = statistics.median(max(t) for t in zip(*times, strict=True))
                for actor in actors:
                    ray.kill(actor)
        finally:
            ray.shutdown()

    a, b = fit_line(list(gather), list(gather.values()))
    alpha, beta = fit_ring(list(ring), list(ring.values()), size)
    print(
        f"two-node local Ray cluster ({len(nodes)} nodes, {os.cpu_count()} cores in all), "
        f"Conv4 delta {size / 1024:.0f} KB, median of {args.rounds} rounds"
    )
    print(f"{'actors':>7}{'gather ms':>11}{'fit':>8}{'all-reduce ms':>15}{'fit':>8}")
    ring_model = {n: 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / beta for n in ring}
    for count in COUNTS:
        measured = f"{'-':>15}{'-':>8}"
        if count in ring:
            measured = f"{1000 * ring[count]:>15.2f}{1000 * ring_model[count]:>8.2f}"
        print(f"{count:>7}{1000 * gather[count]:>11.2f}{1000 * (a + b * count):>8.2f}{measured}")
    print(
        f"fit: gather = {1000 * a:.2f} ms + {1000 * b:.2f} ms × actors; ring: α = "
        f"{1e6 * alpha:.0f} µs per message, β = {beta / 1e9:.2f} GB/s"
    )
    print(f"{'actors':>7}{'gather ms (controller)':>24}{'ring ms (actors)':>18}")
    projection = {}
    for n in EXTRAPOLATE:
        projected = (a + b * n, 2 * (n - 1) * alpha + 2 * (n - 1) / n * size / beta)
        projection[n] = projected
        print(f"{n:>7}{1000 * projected[0]:>24.1f}{1000 * projected[1]:>18.1f}")
    if args.json:
        print(
            json.dumps(
                {
                    "gather_s": gather,
                    "allreduce_s": ring,
                    "gather_fit": [a, b],
                    "ring_fit": [alpha, beta],
                    "projection_s": projection,
                }
            )
        )


if __name__ == "__main__":
    main()
