"""Adaptation load: N clients adapting to a running sine job for a fixed time, real server.

Starts a fresh `reptile serve`, submits a small sine job that keeps training throughout, then
runs `--concurrency` clients, each posting adaptations (10 support points, 50 queries, the
job's 32 steps) back to back for `--seconds`. Reports requests per second, latency percentiles
(all answers, and the 201s alone), and how many answers were 2xx, 429 (over
REPTILE_MAX_CONCURRENT_ADAPTATIONS) or anything else.

    python -m bench.load [--concurrency 8] [--seconds 20] [--max-adaptations 4] [--json]
"""

import argparse
import asyncio
import json
import math
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.server import running_server

JOB = {"rounds": 1_000_000, "meta_batch_size": 4, "eval_every": 0, "num_workers": 1}
XS = [-5 + 10 * i / 9 for i in range(10)]
ADAPTATION = {
    "support": {"x": XS, "y": [2 * math.sin(x + 0.5) for x in XS]},
    "query": {"x": [-5 + 10 * i / 49 for i in range(50)]},
}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)]


async def client_loop(
    client: httpx.AsyncClient, path: str, deadline: float, answers: list[tuple[int, float]]
) -> None:
    """Post adaptations back to back until `deadline`, recording (status, seconds) of each."""
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        try:
            status = (await client.post(path, json=ADAPTATION)).status_code
        except httpx.HTTPError:
            status = 0  # no answer at all: counted with "other"
        answers.append((status, time.perf_counter() - started))


async def load(base_url: str, job_id: str, concurrency: int, seconds: float) -> dict[str, float]:
    answers: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as client:
        started = time.perf_counter()
        deadline = started + seconds
        path = f"/v1/jobs/{job_id}/adaptations"
        await asyncio.gather(
            *(client_loop(client, path, deadline, answers) for _ in range(concurrency))
        )
        elapsed = time.perf_counter() - started
    ok = [s for status, s in answers if 200 <= status < 300]
    every = [s for _, s in answers]
    busy = sum(status == 429 for status, _ in answers)
    return {
        "concurrency": concurrency,
        "seconds": elapsed,
        "requests": len(answers),
        "requests_per_s": len(answers) / elapsed,
        "ok_per_s": len(ok) / elapsed,
        "ok": len(ok),
        "too_many": busy,
        "other": len(answers) - len(ok) - busy,
        "p50_ms": 1000 * percentile(every, 50),
        "p99_ms": 1000 * percentile(every, 99),
        "ok_p50_ms": 1000 * percentile(ok, 50),
        "ok_p99_ms": 1000 * percentile(ok, 99),
        "ok_mean_ms": 1000 * statistics.fmean(ok) if ok else math.nan,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--concurrency", type=int, default=8, help="clients posting at once")
    parser.add_argument("--seconds", type=float, default=20, help="how long they post")
    parser.add_argument(
        "--max-adaptations", type=int, default=4, help="REPTILE_MAX_CONCURRENT_ADAPTATIONS"
    )
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="reptile-load-"))
    env = {"REPTILE_MAX_CONCURRENT_ADAPTATIONS": str(args.max_adaptations)}
    with running_server(data_dir, env=env) as server, server.client() as client:
        job = client.post("/v1/jobs", json=JOB)
        if job.status_code != 202:
            raise SystemExit(f"job refused: {job.status_code} {job.text}")
        job_id = job.json()["id"]
        while (record := client.get(f"/v1/jobs/{job_id}").json())["round"] < 1:
            if record["state"] not in ("queued", "running"):
                raise SystemExit(f"job {job_id} {record['state']}: {record['error']}")
            time.sleep(0.5)
        result = asyncio.run(load(str(client.base_url), job_id, args.concurrency, args.seconds))
        result["job_rounds_during_load"] = client.get(f"/v1/jobs/{job_id}").json()["round"]
        client.post(f"/v1/jobs/{job_id}/cancel")
    result["max_adaptations"] = args.max_adaptations
    print(
        f"{'clients':>7}{'seconds':>9}{'requests':>10}{'req/s':>8}{'201/s':>8}{'2xx':>6}"
        f"{'429':>6}{'other':>7}{'p50 ms':>9}{'p99 ms':>9}{'201 p50':>9}{'201 p99':>9}"
    )
    print(
        f"{result['concurrency']:>7}{result['seconds']:>9.1f}{result['requests']:>10}"
        f"{result['requests_per_s']:>8.1f}{result['ok_per_s']:>8.1f}{result['ok']:>6}"
        f"{result['too_many']:>6}{result['other']:>7}{result['p50_ms']:>9.0f}"
        f"{result['p99_ms']:>9.0f}{result['ok_p50_ms']:>9.0f}{result['ok_p99_ms']:>9.0f}"
    )
    print(
        f"(REPTILE_MAX_CONCURRENT_ADAPTATIONS={args.max_adaptations}; the job trained on "
        f"throughout, round {result['job_rounds_during_load']} at the end)"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
