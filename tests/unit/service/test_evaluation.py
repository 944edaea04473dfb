"""An image job's held-out evaluation: the job's ways as it trains, every setting at the end."""

from typing import Any

import numpy as np
import pytest
import torch

from bench.throughput.inprocess import InProcessRunner
from reptile.inner import InnerConfig
from reptile.params import Params, init_params
from reptile.tasks import eval_task_seeds
from reptile.tasks.fewshot import ImageSet, fewshot_model
from service.evaluation import FINAL_BATCH, FewShotEvaluation
from service.specs import OmniglotJobSpec

HELD_OUT_CLASSES = 24  # enough for 20-way held-out tasks


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Random 28×28 images: 8 training classes (group "train") and 24 held-out ("test")."""
    classes, per_class = 8 + HELD_OUT_CLASSES, 3
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (classes * per_class, 1, 28, 28), generator=generator)
    groups = ["train"] * 8 + ["test"] * HELD_OUT_CLASSES
    prepared = ImageSet(
        images=images.to(torch.uint8),
        labels=torch.arange(classes).repeat(per_class),
        classes=tuple(f"{g}/c{c}" for c, g in enumerate(groups)),
        groups=tuple(groups),
    )
    path = tmp_path_factory.mktemp("evaluation") / "images.pt"
    torch.save(prepared.record(), path)
    return str(path)


class Scorer:
    """The actor's own `score_held_out`, in this process; records each call's tasks."""

    def __init__(self, spec: OmniglotJobSpec, dataset: str) -> None:
        self.runner = InProcessRunner(spec.task, spec.task_options(dataset))
        self.calls: list[tuple[int, int, int]] = []  # (ways, shots, tasks)

    def __call__(
        self,
        phi: Params,
        seeds: list[int],
        family: dict[str, Any],
        config: InnerConfig,
        transductive: bool,
    ) -> list[float]:
        self.calls.append((family["ways"], family["eval_shots"], len(seeds)))
        return self.runner.score_held_out(phi, seeds, family, config, transductive)


def test_the_final_evaluation_scores_5_and_20_ways_to_a_tight_ci(dataset: str) -> None:
    spec = OmniglotJobSpec(
        task="omniglot",
        data="unused",
        ways=3,
        shots=1,
        inner_batch_size=3,
        queries=1,
        eval_shots=[1, 2],
        held_out=["test"],
        rounds=10,
        eval_tasks=4,
        eval_steps=1,
        final_eval_tasks=110,
    )
    score = Scorer(spec, dataset)
    evaluation = FewShotEvaluation(spec, dataset, score)
    phi = init_params(fewshot_model(3, 1, 28), 0)

    periodic, _ = evaluation(phi, 5)  # while training: the job's own 3 ways, eval_tasks tasks
    assert set(periodic) == {f"eval_acc_3w{k}s{ci}" for k in (1, 2) for ci in ("", "_ci95")}
    assert score.calls == [(3, 1, 4), (3, 2, 4)]

    score.calls.clear()
    final, _ = evaluation(phi, spec.rounds)
    settings = [(3, 1), (3, 2), (5, 1), (5, 2), (20, 1), (20, 2)]
    assert {(w, k) for w, k, _ in score.calls} == set(settings)
    for ways, shots in settings:
        name = f"eval_acc_{ways}w{shots}s"
        tasks = final[f"eval_tasks_{ways}w{shots}s"]
        assert 0 <= final[name] <= 1
        # FINAL_BATCH tasks at a time until the CI is 1 point or the tasks run out
        assert final[f"{name}_ci95"] <= 0.01 or tasks == spec.final_eval_tasks
        assert tasks % FINAL_BATCH == 0 or tasks == spec.final_eval_tasks
        drawn = [t for w, k, t in score.calls if (w, k) == (ways, shots)]
        assert sum(drawn) == tasks
        # each call within the work limit, however many ways
        assert max(drawn) * spec.eval_steps * ways * shots <= spec.max_work
    # random weights, 3 queries a task: far from a 1-point CI, so every task is drawn
    assert final["eval_tasks_3w1s"] == spec.final_eval_tasks > FINAL_BATCH
    options = spec.held_out_options(dataset, 3, 1)
    seeds = eval_task_seeds(spec.final_eval_tasks)
    accuracies = score(phi, seeds, options, spec.eval_config(), spec.transductive)
    assert final["eval_acc_3w1s"] == pytest.approx(np.mean(accuracies))


@pytest.mark.parametrize(("final_ways", "ways"), [([4], {3, 4}), ([], {3}), ([3, 50], {3})])
def test_the_final_evaluation_scores_the_jobs_final_ways_that_the_held_out_classes_hold(
    dataset: str, final_ways: list[int], ways: set[int]
) -> None:
    spec = OmniglotJobSpec(
        task="omniglot",
        data="unused",
        ways=3,
        shots=1,
        inner_batch_size=3,
        queries=1,
        eval_shots=[1],
        held_out=["test"],
        rounds=1,
        eval_tasks=2,
        eval_steps=1,
        final_eval_tasks=2,
        final_ways=final_ways,
    )
    score = Scorer(spec, dataset)
    final, _ = FewShotEvaluation(spec, dataset, score)(init_params(fewshot_model(3, 1, 28), 0), 1)
    assert {w for w, _, _ in score.calls} == ways  # 50 ways: more than the 24 held-out classes
    assert {name for name in final if name.startswith("eval_acc_")} == {
        f"eval_acc_{w}w1s{ci}" for w in ways for ci in ("", "_ci95")
    }
