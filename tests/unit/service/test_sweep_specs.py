"""Sweep specs: the space is checked against the job spec at submission, naming the field."""

from typing import Any

import pytest
from pydantic import ValidationError
from ray.tune.search.sample import Categorical, Float, Integer

from service.specs import SineJobSpec
from service.sweep_specs import SweepSpec

BASE = {"rounds": 8, "eval_every": 2, "meta_batch_size": 4}


def _sweep(**fields: Any) -> SweepSpec:
    return SweepSpec.model_validate({"base": BASE, **fields})


def _refusal(**fields: Any) -> str:
    with pytest.raises(ValidationError) as raised:
        _sweep(**fields)
    return str(raised.value)


def test_the_issues_example_becomes_a_tune_space_with_trials_per_grid_point() -> None:
    sweep = _sweep(
        space={
            "inner_lr": {"loguniform": [1e-3, 0.1]},
            "inner_steps": {"choice": [1, 5, 10]},
            "meta_batch_size": {"grid": [5, 10, 32]},
        },
        trials=6,
    )
    assert sweep.grid_size == 3 and sweep.trials // sweep.grid_size == 2
    space = sweep.param_space()
    assert isinstance(space["inner_lr"], Float) and space["inner_lr"].lower == 1e-3
    assert isinstance(space["inner_steps"], Categorical)
    assert space["inner_steps"].categories == [1, 5, 10]
    assert space["meta_batch_size"] == {"grid_search": [5, 10, 32]}
    assert sweep.grace_rounds == BASE["eval_every"]  # ASHA's default grace: one evaluation


def test_randint_includes_its_upper_bound() -> None:
    space = _sweep(space={"inner_steps": {"randint": [1, 4]}}, metric="eval_mse_before")
    sampler = space.param_space()["inner_steps"]
    assert isinstance(sampler, Integer) and (sampler.lower, sampler.upper) == (1, 5)


def test_a_trial_is_the_base_with_its_values_checkpointed_at_each_evaluation() -> None:
    sweep = _sweep(space={"inner_lr": {"uniform": [0.01, 0.1]}})
    spec = sweep.trial_spec({"inner_lr": 0.05})
    assert isinstance(spec, SineJobSpec)
    assert spec.inner_lr == 0.05 and spec.rounds == 8 and spec.meta_batch_size == 4
    assert spec.checkpoint_every == spec.eval_every == 2


@pytest.mark.parametrize(
    ("space", "expected"),
    [
        ({"inner_stepz": {"choice": [1]}}, "space.inner_stepz: not a field of a sine job"),
        ({"rounds": {"grid": [4, 8]}}, "space.rounds: a sweep cannot vary 'rounds'"),
        ({"num_workers": {"grid": [1, 2]}}, "space.num_workers: a sweep cannot vary"),
        ({"inner_lr": {"loguniform": [1e-3, 200.0]}}, "space.inner_lr {'inner_lr': 200.0}"),
        ({"inner_lr": {"loguniform": [0.0, 0.1]}}, "loguniform needs 0 < low < high"),
        ({"inner_steps": {"choice": [5, 0]}}, "space.inner_steps {'inner_steps': 0}"),
        ({"inner_optimizer": {"choice": ["sgd", "rmsprop"]}}, "space.inner_optimizer"),
        ({"inner_batch_size": {"grid": [10, 60]}}, "cannot exceed the 50 examples"),
        ({"seed": {"grid": [0, -1]}}, "space.seed {'seed': -1}"),
    ],
)
def test_a_value_the_job_would_refuse_is_refused_naming_the_field(
    space: dict[str, Any], expected: str
) -> None:
    assert expected in _refusal(space=space)


def test_values_that_pass_alone_are_checked_together() -> None:
    """meta_batch_size × inner_steps × inner_batch_size must stay within a round's limit."""
    space = {
        "meta_batch_size": {"grid": [10, 1024]},
        "inner_steps": {"choice": [5, 1000]},
    }
    assert "exceeds this service's limit" in _refusal(space=space, metric="eval_mse_before")


def test_the_metric_must_be_one_every_trial_reports() -> None:
    refusal = _refusal(space={"inner_steps": {"choice": [1, 5]}}, metric="eval_mse_after_5")
    assert "metric 'eval_mse_after_5' is not reported by a trial with {'inner_steps': 1}" in refusal
    assert "eval_mse_after_32" in refusal  # what it does report
    assert "not reported" in _refusal(space={"inner_lr": {"grid": [0.1]}}, metric="eval_acc_5w1s")


def test_trials_concurrency_and_grace_must_fit_the_sweep() -> None:
    grid = {"inner_lr": {"grid": [0.01, 0.02]}}
    assert "multiple of the grid's 2 points" in _refusal(space=grid, trials=3)
    assert "max_concurrent (3) exceeds trials" in _refusal(space=grid, trials=2, max_concurrent=3)
    assert "grace_period exceeds base.rounds" in _refusal(space=grid, trials=2, grace_period=9)
    base = {**BASE, "eval_every": 0}
    with pytest.raises(ValidationError, match="base.eval_every must be at least 1"):
        SweepSpec.model_validate({"base": base, "space": grid, "trials": 2})
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        _sweep(space=grid, trials=2, schedular="fifo")
