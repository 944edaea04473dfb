"""Job specs: defaults, validation, one vocabulary with the algorithm's configs."""

import pytest
from pydantic import ValidationError

from service.specs import JobSpec


def test_every_field_is_optional_and_task_defaults_to_sine() -> None:
    spec = JobSpec()
    assert spec.task == "sine"
    config = spec.meta_config()
    assert (config.rounds, config.meta_batch_size) == (spec.rounds, spec.meta_batch_size)
    assert config.inner.steps == spec.inner_steps and config.inner.lr == spec.inner_lr
    assert spec.eval_step_counts() == [0, 1, spec.inner_steps, spec.eval_steps]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": "imagenet"}, "Input should be 'sine'"),
        ({"inner_step": 5}, "Extra inputs are not permitted"),
        ({"inner_steps": -1}, "greater than or equal to 1"),
        ({"inner_lr": float("nan")}, "finite number"),
        ({"outer_lr": float("inf")}, "finite number"),
        ({"inner_optimizer": "rmsprop"}, "'sgd' or 'adam'"),
        ({"shots": 5, "inner_batch_size": 10}, "cannot exceed shots"),
        ({"outer_lr": 0.1, "outer_lr_final": 0.5}, "must not exceed outer_lr"),
        ({"rounds": "many"}, "valid integer"),
    ],
)
def test_bad_fields_are_rejected_with_a_message(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        JobSpec.model_validate(body)
    assert message in str(error.value)
