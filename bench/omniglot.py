"""Omniglot: the default few-shot job through a real server, scored on held-out alphabets.

Runs `{"task": "omniglot", "data": DATA}` (every other field at its default) on a fresh
`reptile serve` and reports the held-out 5-way 1-shot and 5-shot accuracy with 95 % confidence
intervals (from the job's final evaluation), the training time and tasks per second.

    python -m bench.omniglot [--data ../shared/data/omniglot] [--eval-tasks N] [--json]
"""

import argparse
import json
import tempfile
from pathlib import Path

from bench.server import run_job, running_server

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=SHARED, help="zips or alphabet folders")
    parser.add_argument("--eval-tasks", type=int, help="held-out tasks per evaluation")
    parser.add_argument("--rounds", type=int, help="override the default rounds (quick runs)")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"no Omniglot data at {args.data}")
    body: dict[str, object] = {"task": "omniglot", "data": str(args.data.resolve())}
    if args.eval_tasks:
        body["eval_tasks"] = args.eval_tasks
    if args.rounds:
        body |= {"rounds": args.rounds, "eval_every": 0}
    data_dir = Path(tempfile.mkdtemp(prefix="reptile-omniglot-"))
    with running_server(data_dir) as server, server.client() as client:
        record, seconds = run_job(client, body)
    spec, evaluation = record["spec"], record["evaluation"]
    tasks = spec["rounds"] * spec["meta_batch_size"]
    result = {
        "acc_5w1s": evaluation["eval_acc_5w1s"],
        "ci_5w1s": evaluation["eval_acc_5w1s_ci95"],
        "acc_5w5s": evaluation["eval_acc_5w5s"],
        "ci_5w5s": evaluation["eval_acc_5w5s_ci95"],
        "train_seconds": seconds,
        "tasks_per_s": tasks / seconds,
        "job_id": record["id"],
    }
    print(f"{'setting':<16}{'accuracy':>10}{'95% CI':>10}")
    for k in (1, 5):
        print(f"{f'5-way {k}-shot':<16}{result[f'acc_5w{k}s']:>10.3f}{result[f'ci_5w{k}s']:>10.3f}")
    print(
        f"rounds {spec['rounds']} × meta-batch {spec['meta_batch_size']} = {tasks} tasks in "
        f"{seconds:.0f} s ({result['tasks_per_s']:.1f} tasks/s, evaluations included)"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
