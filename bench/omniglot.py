"""Omniglot: the default few-shot job through a real server, scored on held-out alphabets.

Runs `{"task": "omniglot", "data": DATA}` (every other field at its default, or as `--fields`
says) on a fresh `reptile serve` and reports, for every setting the job's final evaluation
scored (5-way and 20-way, 1- and 5-shot, transductive), the accuracy with its 95 % CI and the
number of tasks behind it; beside it the same settings scored non-transductively, through
`POST /v1/jobs/{id}/evaluations`. Then the job's wall time, the part spent in rounds, and
tasks per second. The learning curve (accuracy against rounds) is the job's MLflow artifact
`plots/learning_curve.png`; `--figure` copies it out.

    python -m bench.omniglot [--data ../shared/data/omniglot] [--fields '{"ways": 20}']
        [--rounds N] [--eval-tasks N] [--nt-tasks N] [--figure docs/omniglot_curve.png] [--json]
"""

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import httpx
from mlflow import MlflowClient

from bench.server import run_evaluation, run_job, running_server

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def non_transductive(client: httpx.Client, job_id: str, tasks: int) -> tuple[list[Any], float]:
    """The job's φ scored with batch norm over the support set plus one query at a time, on
    the 5-/20-way, 1-/5-shot settings, through the evaluations resource; and its seconds."""
    body = {"ways": [5, 20], "shots": [1, 5], "tasks": tasks, "transductive": False}
    record, seconds = run_evaluation(client, job_id, body)
    return record["results"], seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED, help="zips or alphabet folders")
    parser.add_argument("--fields", type=json.loads, default={}, help="job fields, as JSON")
    parser.add_argument("--eval-tasks", type=int, help="held-out tasks per periodic evaluation")
    parser.add_argument("--rounds", type=int, help="override the default rounds (quick runs)")
    parser.add_argument("--nt-tasks", type=int, default=200, help="non-transductive tasks")
    parser.add_argument("--figure", type=Path, help="copy the learning curve PNG here")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"no Omniglot data at {args.data}")
    body: dict[str, Any] = {"task": "omniglot", "data": str(args.data.resolve()), **args.fields}
    if args.eval_tasks:
        body["eval_tasks"] = args.eval_tasks
    if args.rounds:
        body |= {"rounds": args.rounds, "eval_every": 0}
    data_dir = Path(tempfile.mkdtemp(prefix="reptile-omniglot-"))
    with running_server(data_dir) as server, server.client() as client:
        record, seconds = run_job(client, body)
        plain, nt_seconds = non_transductive(client, record["id"], args.nt_tasks)
        mlflow = MlflowClient(server.tracking_uri)
        run_id = record["mlflow"]["run_id"]
        in_rounds = sum(m.value for m in mlflow.get_metric_history(run_id, "round_seconds"))
        curve = Path(mlflow.download_artifacts(run_id, "plots/learning_curve.png", str(data_dir)))
        if args.figure:
            shutil.copyfile(curve, args.figure)
    spec, evaluation = record["spec"], record["evaluation"]
    tasks = spec["rounds"] * spec["meta_batch_size"]
    by_setting = {(r["ways"], r["shots"]): r for r in plain}
    rows = []
    for ways, shots in sorted(by_setting):
        key = f"{ways}w{shots}s"
        if f"eval_acc_{key}" not in evaluation:
            continue  # a setting the held-out classes cannot serve
        rows.append(
            {
                "setting": key,
                "acc": evaluation[f"eval_acc_{key}"],
                "ci": evaluation[f"eval_acc_{key}_ci95"],
                "tasks": int(evaluation[f"eval_tasks_{key}"]),
                "nt_acc": by_setting[ways, shots]["accuracy"],
                "nt_ci": by_setting[ways, shots]["ci95"],
                "nt_tasks": by_setting[ways, shots]["tasks"],
            }
        )
    print(f"{'setting':<10}{'transductive':>22}{'tasks':>7}{'non-transductive':>22}{'tasks':>7}")
    for r in rows:
        print(
            f"{r['setting']:<10}{r['acc']:>14.3f} ± {r['ci']:.3f}{r['tasks']:>7}"
            f"{r['nt_acc']:>14.3f} ± {r['nt_ci']:.3f}{r['nt_tasks']:>7}"
        )
    print(
        f"job {record['id']}: rounds {spec['rounds']} × meta-batch {spec['meta_batch_size']} = "
        f"{tasks} tasks; {seconds:.0f} s from submission to succeeded, {in_rounds:.0f} s of it "
        f"in rounds ({tasks / seconds:.1f} tasks/s overall, {tasks / in_rounds:.1f} in rounds); "
        f"non-transductive evaluation {nt_seconds:.0f} s"
    )
    print(f"learning curve: {args.figure or curve} (MLflow run {run_id}, plots/)")
    if args.json:
        result = {
            "rows": rows,
            "seconds": seconds,
            "round_seconds": in_rounds,
            "nt_seconds": nt_seconds,
            "job_id": record["id"],
            "spec": spec,
        }
        print(json.dumps(result))


if __name__ == "__main__":
    main()
