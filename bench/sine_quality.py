"""Sine quality: the service's default job against the Reptile blog's serial example.

Side by side on the same held-out tasks (10 shots, SGD lr 0.02, MSE on 50 evenly spaced
points), at the same number of tasks seen (30,000):

1. a random initialisation (no meta-training),
2. the blog's serial loop (Schulman): one task per iteration, 5 inner steps, ε 0.1 → 0,
3. the service's default job, run through a real `reptile serve` (local Ray, MLflow).

    python -m bench.sine_quality [--eval-tasks 100] [--json]
"""

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load

from bench.server import run_job, running_server
from reptile.evaluate import evaluate
from reptile.inner import InnerConfig
from reptile.meta import MetaConfig
from reptile.params import init_params
from reptile.serial import train_serial
from reptile.tasks import eval_task_seeds
from reptile.tasks.sine import SineFamily

STEPS = [1, 5, 32]
SCHULMAN = MetaConfig(
    rounds=30_000,
    meta_batch_size=1,
    outer_lr=0.1,
    inner=InnerConfig(steps=5, batch_size=10, lr=0.02),
)


def run_default_job() -> tuple[dict[str, torch.Tensor], float, dict[str, Any]]:
    """Run `{}` (all defaults) on a fresh server; return φ, the seconds it ran, its record."""
    data_dir = Path(tempfile.mkdtemp(prefix="reptile-bench-"))
    with running_server(data_dir) as server, server.client() as client:
        record, seconds = run_job(client, {})
        phi = load(client.get(f"/v1/jobs/{record['id']}/weights").content)
    return phi, seconds, record


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--eval-tasks", type=int, default=100)
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()

    family = SineFamily()
    model = family.make_model()
    seeds = eval_task_seeds(args.eval_tasks)

    def score(phi: dict[str, torch.Tensor]) -> dict[int, float]:
        return evaluate(family, model, phi, seeds, InnerConfig(steps=max(STEPS), lr=0.02), STEPS)

    rows = [("random init", 0, 0.0, score(init_params(model, 0)))]
    started = time.perf_counter()
    serial_phi = train_serial(family, SCHULMAN, seed=0)
    rows.append(("serial (Schulman)", 30_000, time.perf_counter() - started, score(serial_phi)))
    phi, seconds, record = run_default_job()
    spec = record["spec"]
    rows.append(
        ("service default job", spec["rounds"] * spec["meta_batch_size"], seconds, score(phi))
    )

    print(f"{'method':<22}{'tasks':>8}{'seconds':>9}" + "".join(f"{f'MSE@{k}':>10}" for k in STEPS))
    for name, tasks_seen, secs, mse in rows:
        print(f"{name:<22}{tasks_seen:>8}{secs:>9.0f}" + "".join(f"{mse[k]:>10.3f}" for k in STEPS))
    serial, service, random = rows[1][3][32], rows[2][3][32], rows[0][3][32]
    print(f"MSE@32: service/serial {service / serial:.2f}, service/random {service / random:.3f}")
    if args.json:
        print(
            json.dumps(
                {
                    "random_mse32": random,
                    "serial_mse32": serial,
                    "service_mse32": service,
                    "service_seconds": seconds,
                    "serial_seconds": rows[1][2],
                    "job_id": record["id"],
                }
            )
        )


if __name__ == "__main__":
    main()
