"""The paper's analysis of inner-loop gradient combinations (Nichol et al. 2018, section 5 and
its figure of g1, g2, …, g1 + g2 + …): which sums of the inner steps' gradients make a useful
meta-gradient, on sine regression.

With k = 4 SGD steps on mini-batches 1…4, g_j is the gradient of mini-batch j's loss at the
weights step j starts from (g1 at φ: joint training; g4 alone: FOMAML's last step; g1 + … + g4:
Reptile's φ − W_4, over lr). Each combination trains φ for the same rounds (outer Adam at the
sine job's defaults, ε 0.005 → 0, 10 tasks a round) and is scored on the held-out tasks (MSE
after 32 SGD steps on 10 shots) as it trains. The paper's finding: g1 alone (joint training)
does not learn to adapt; g4 does, and sums of more of the later gradients do better still.

    python -m bench.combinations [--quick] [--json] [--figure docs/combinations.png]
"""

import argparse
import io
import json
import time
from pathlib import Path

import torch
from matplotlib.figure import Figure

from reptile.evaluate import evaluate
from reptile.inner import InnerConfig, batched_step, chunk_tasks, gather, stacked_copies, trajectory
from reptile.meta import MetaConfig, MetaOptimizer, epsilon
from reptile.params import Params, init_params, scale
from reptile.tasks import eval_task_seeds, task_seeds
from reptile.tasks.sine import SineFamily
from service.files import atomic_write

COMBINATIONS: dict[str, tuple[int, ...]] = {
    "g1": (1,),
    "g2": (2,),
    "g4": (4,),
    "g1+g2": (1, 2),
    "g3+g4": (3, 4),
    "g1+g2+g3+g4": (1, 2, 3, 4),
}
INNER = InnerConfig(steps=4, lr=0.02, batch_size=10)
ADAPTATION = InnerConfig(steps=32, lr=0.02)


def combined_direction(
    family: SineFamily, model: torch.nn.Module, phi: Params, seeds: list[int], used: tuple[int, ...]
) -> Params:
    """Σ over tasks of Σ_{j ∈ used} (W_j − W_{j−1}) = −lr · Σ_j g_j (SGD): the chunk's d."""
    chunk = chunk_tasks(family, model, phi, seeds, INNER)
    step = batched_step(family, model, INNER)
    pairs = ((gather(chunk.inputs, b), gather(chunk.targets, b)) for b in chunk.batches)
    weights = stacked_copies(chunk.phi, len(seeds))
    total = {name: torch.zeros_like(w) for name, w in weights.items()}
    with torch.no_grad():
        for number, (after, _) in enumerate(trajectory(step, weights, pairs), start=1):
            if number in used:
                total = {name: total[name] + after[name] - weights[name] for name in total}
            weights = after
    return {name: t.sum(0) for name, t in total.items()}


def train(used: tuple[int, ...], rounds: int, every: int, eval_tasks: int) -> list[float]:
    """Held-out MSE@32 at rounds 0, every, 2·every, …, rounds."""
    family = SineFamily()
    model = family.make_model()
    config = MetaConfig(
        rounds=rounds, meta_batch_size=10, outer_lr=0.005, inner=INNER, outer_optimizer="adam"
    )
    meta = MetaOptimizer(init_params(model, 0), "adam")
    seeds = eval_task_seeds(eval_tasks)
    curve = [evaluate(family, model, meta.phi, seeds, ADAPTATION, [32])[32]]
    for r in range(rounds):
        tasks = task_seeds(0, r, config.meta_batch_size)
        direction = combined_direction(family, model, meta.phi, tasks, used)
        meta.step(scale(direction, 1 / len(tasks)), epsilon(r, config))
        if (r + 1) % every == 0:
            curve.append(evaluate(family, model, meta.phi, seeds, ADAPTATION, [32])[32])
    return curve


def figure_png(curves: dict[str, list[float]], every: int) -> bytes:
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for name, curve in curves.items():
        axes.plot([i * every for i in range(len(curve))], curve, label=name)
    axes.set(xlabel="round", ylabel="held-out MSE after 32 steps", yscale="log")
    axes.set_title("Sine: inner-loop gradient combinations as the meta-gradient (k = 4)")
    axes.legend(fontsize=8)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="500 rounds each, under a minute")
    parser.add_argument("--figure", type=Path, help="write the curves as a PNG here")
    parser.add_argument("--json", action="store_true", help="last line: one JSON object")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rounds, every, eval_tasks = (500, 100, 32) if args.quick else (3000, 250, 100)
    curves, seconds = {}, {}
    for name, used in COMBINATIONS.items():
        started = time.perf_counter()
        curves[name] = train(used, rounds, every, eval_tasks)
        seconds[name] = time.perf_counter() - started
    print(f"{'combination':<14}{'MSE@32 at round 0':>18}{f'at {rounds}':>10}{'seconds':>9}")
    for name, curve in curves.items():
        print(f"{name:<14}{curve[0]:>18.3f}{curve[-1]:>10.3f}{seconds[name]:>9.1f}")
    if args.figure:
        atomic_write(args.figure, figure_png(curves, every))
        print(f"figure: {args.figure}")
    if args.json:
        print(json.dumps({"rounds": rounds, "curves": curves}))


if __name__ == "__main__":
    main()
