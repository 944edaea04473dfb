"""The paper's comparison inside the service: Reptile, FOMAML and MAML side by side.

Each algorithm trains as a job through a real `reptile serve` (local Ray, MLflow: one run per
job, the algorithm a param of it), on sine and on Omniglot (scored 5-way 1-shot and 5-shot on
held-out alphabets), twice: at equal tasks seen (the same rounds × meta-batch), then at equal
wall time (each algorithm's rounds set so that, at the tasks/s its first job measured, it
trains as long as Reptile's first job did; time in rounds, the sum of the run's
`round_seconds`, not the evaluations'). Reported per job: the held-out score with its 95 % CI
(sine: MSE after 32 steps on 10 shots, over the held-out tasks, from the job's φ; Omniglot:
the job's final 5-way accuracies), the wall time from submission to the end, the time in
rounds and tasks/s in rounds, and the peak RSS of one actor
running one chunk of a round (measured in a fresh process: the served actors' memory is not
reported by the API).

    python -m bench.compare [--quick] [--json] [--data ../shared/data/omniglot]

`--quick`: short jobs (sine 300 rounds, Omniglot 100, scored on 100 tasks a setting), some
minutes on two cores; far from the paper's 100,000 rounds, so it shows direction and cost,
not the paper's accuracies.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from mlflow import MlflowClient
from safetensors.torch import load

from bench.server import run_job, running_server
from reptile.gradients import task_loss
from reptile.inner import adapt
from reptile.params import init_params, to_numpy
from reptile.tasks import eval_task_seeds, task_seeds
from service.datasets import prepare_omniglot
from service.evaluation import mean_and_ci95
from service.specs import SineJobSpec, parse_spec
from workers.actor import ChunkRequest, InnerLoopWorker, pack

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
SINE: dict[str, dict[str, Any]] = {  # the service's sine defaults, each algorithm's own fields
    "reptile": {},
    "fomaml": {"algorithm": "fomaml", "tail_shots": 10},
    "maml": {"algorithm": "maml", "tail_shots": 10},
}
OMNIGLOT: dict[str, dict[str, Any]] = {  # 10 shots a class, 5 inner steps of 10 images
    "reptile": {},
    "fomaml": {"algorithm": "fomaml", "tail_shots": 5},  # the paper's --foml-tail 5
    # MAML's own recipe: inner SGD, outer Adam 0.001 on the gradient
    "maml": {
        "algorithm": "maml",
        "tail_shots": 5,
        "inner_optimizer": "sgd",
        "inner_lr": 0.1,
        "outer_optimizer": "adam",
        "outer_lr": 0.001,
    },
}


def chunk_peak_rss(body: dict[str, Any], dataset: str | None) -> int:
    """Peak RSS (bytes) of a fresh process that builds an actor and runs one chunk of the job's
    first round (its meta-batch split over its workers)."""
    code = (
        "import json, sys; from bench.compare import _measure_chunk; "
        "print(_measure_chunk(json.loads(sys.argv[1]), sys.argv[2] or None))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(body), dataset or ""],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.split()[-1])


def _measure_chunk(body: dict[str, Any], dataset: str | None) -> int:
    """What `chunk_peak_rss` runs in its own process."""
    spec = parse_spec(body)
    worker = InnerLoopWorker(spec.task, spec.task_options(dataset))
    per_actor = -(-spec.meta_batch_size // spec.num_workers)
    seeds = np.array(task_seeds(spec.seed, 0, per_actor), np.uint64)
    phi = to_numpy(init_params(worker.model, spec.seed))
    request = ChunkRequest(seeds, spec.inner_config(), phi, algorithm=spec.algorithm_config())
    worker.run_chunk(pack(request))
    return worker.peak_rss_bytes()


def sine_mse(phi: dict[str, torch.Tensor], tasks: int) -> tuple[float, float]:
    """Mean held-out MSE after 32 SGD steps on 10 shots (the sine job's eval), and its CI."""
    spec = SineJobSpec()
    family = spec.family()
    model = family.make_model()
    losses = []
    for seed in eval_task_seeds(tasks):
        task = family.sample_eval_task(seed)
        adapted = adapt(model, phi, task.support, spec.eval_config(), loss_fn=family.loss)
        losses.append(task_loss(model, adapted, family.loss, task.query).item())
    return mean_and_ci95(losses)


def run(
    client: httpx.Client, tracking_uri: str, body: dict[str, Any], eval_tasks: int
) -> dict[str, Any]:
    """One job; its scores, tasks/s and MLflow run. An image job's row also holds its
    round-0 scores (`init1`, `init5`): the initialisation adapted as that job adapts (MAML's
    inner SGD adapts it differently from the others' Adam)."""
    record, seconds = run_job(client, body)
    spec = record["spec"]
    tasks = spec["rounds"] * spec["meta_batch_size"]
    run_id = record["mlflow"]["run_id"]
    history = MlflowClient(tracking_uri).get_metric_history
    in_rounds = sum(m.value for m in history(run_id, "round_seconds"))
    row: dict[str, Any] = {
        "rounds": spec["rounds"],
        "tasks": tasks,
        "seconds": seconds,
        "round_seconds": in_rounds,
        "tasks_per_s": tasks / in_rounds,
        "run_id": run_id,
    }
    if spec["task"] == "sine":
        phi = load(client.get(f"/v1/jobs/{record['id']}/weights").content)
        row["mse"], row["mse_ci"] = sine_mse(phi, eval_tasks)
    else:
        for k in (1, 5):
            row[f"acc{k}"] = record["evaluation"][f"eval_acc_5w{k}s"]
            row[f"acc{k}_ci"] = record["evaluation"][f"eval_acc_5w{k}s_ci95"]
            start = history(run_id, f"eval_acc_5w{k}s")
            row[f"init{k}"] = next(m.value for m in start if m.step == 0)
    return row


def sine_initialisation() -> dict[str, Any]:
    """The row of φ's random initialisation (seed 0, every sine job's): the same adaptation as
    every sine job's evaluation."""
    row: dict[str, Any] = {"family": "sine", "algorithm": "init", "budget": "-", "rounds": 0}
    row |= {"seconds": 0.0, "round_seconds": 0.0, "tasks_per_s": 0.0, "peak_rss_mib": 0.0}
    row["mse"], row["mse_ci"] = sine_mse(init_params(SineJobSpec().family().make_model(), 0), 100)
    return row


def compare(
    client: httpx.Client,
    tracking_uri: str,
    family: str,
    common: dict[str, Any],
    variants: dict[str, dict[str, Any]],
    eval_tasks: int,
    dataset: str | None,
) -> list[dict[str, Any]]:
    """Each algorithm at equal tasks seen, then at Reptile's time in rounds."""
    rows = []
    for name, fields in variants.items():
        body = {**common, **fields, "name": f"compare-{family}-{name}-tasks"}
        row = run(client, tracking_uri, body, eval_tasks)
        row |= {"family": family, "algorithm": name, "budget": "equal tasks"}
        row["peak_rss_mib"] = chunk_peak_rss({**common, **fields}, dataset) / 2**20
        rows.append(row)
    budget = rows[0]["round_seconds"]
    for first in rows[1:]:
        rounds = max(1, round(budget / first["round_seconds"] * first["rounds"]))
        fields = variants[first["algorithm"]]
        body = {
            **common,
            **fields,
            "rounds": rounds,
            "name": f"compare-{family}-{first['algorithm']}-time",
        }
        row = run(client, tracking_uri, body, eval_tasks)
        row |= {"family": family, "algorithm": first["algorithm"], "budget": "equal time"}
        row["peak_rss_mib"] = first["peak_rss_mib"]
        rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Sine: held-out MSE ± CI; Omniglot: 1-/5-shot accuracy ± CI, after its round-0 score."""
    head = (
        f"{'family':<9}{'algorithm':<9}{'budget':<12}{'rounds':>7}{'wall s':>8}{'rounds s':>9}"
        f"{'tasks/s':>8}"
        f"  {'score (Omniglot: init → trained, 1-shot | 5-shot)':<50}{'actor MiB':>10}"
    )
    lines = [head]
    for r in rows:
        if r["family"] == "sine":
            score = f"MSE {r['mse']:.3f} ± {r['mse_ci']:.3f}"
        else:
            score = " | ".join(
                f"{r[f'init{k}']:.3f} → {r[f'acc{k}']:.3f} ± {r[f'acc{k}_ci']:.3f}" for k in (1, 5)
            )
        lines.append(
            f"{r['family']:<9}{r['algorithm']:<9}{r['budget']:<12}{r['rounds']:>7}"
            f"{r['seconds']:>8.0f}{r['round_seconds']:>9.1f}{r['tasks_per_s']:>8.1f}  {score:<50}"
            f"{r['peak_rss_mib']:>10.0f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="short jobs, a few minutes")
    parser.add_argument("--data", type=Path, default=SHARED, help="Omniglot zips or folders")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    sine = {"rounds": 300 if args.quick else 3000, "eval_every": 0}
    omniglot: dict[str, Any] = {
        "task": "omniglot",
        "data": str(args.data.resolve()),
        "rounds": 100 if args.quick else 1000,
        "eval_every": 0,
        "eval_tasks": 20 if args.quick else 100,
        "final_eval_tasks": 100 if args.quick else 1000,
        "final_ways": [],  # the 5-way settings only: 20-way would be most of each job's time
    }
    data_dir = Path(tempfile.mkdtemp(prefix="reptile-compare-"))
    started = time.perf_counter()
    with running_server(data_dir) as server, server.client() as client:
        tracking = server.tracking_uri
        rows = [sine_initialisation(), *compare(client, tracking, "sine", sine, SINE, 100, None)]
        if args.data.exists():
            # the prepared file the actors read, as the server prepares it at submission
            dataset = str(prepare_omniglot(args.data, data_dir / "prepared"))
            rows += compare(client, tracking, "omniglot", omniglot, OMNIGLOT, 0, dataset)
        else:
            print(f"no Omniglot data at {args.data}: sine only")
    print(table(rows))
    print(f"{len(rows)} jobs in {time.perf_counter() - started:.0f} s; MLflow runs at {tracking}")
    for family in dict.fromkeys(r["family"] for r in rows):
        first = {
            r["algorithm"]: r
            for r in rows
            if r["family"] == family and r["budget"] == "equal tasks"
        }
        speed = ", ".join(
            f"{n} {first[n]['tasks_per_s'] / first['reptile']['tasks_per_s']:.2f}×" for n in first
        )
        print(f"{family}: tasks/s relative to Reptile: {speed}")
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
