"""Job specs: defaults, validation, one vocabulary with the algorithm's configs."""

from pathlib import Path

import pytest
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from pydantic import ValidationError

from api.cli.local import read_job_file
from reptile.tasks import fewshot
from service.specs import MAX_PARAM_VALUE_LENGTH, MAX_WAYS, OmniglotJobSpec, SineJobSpec, parse_spec


def test_every_field_is_optional_and_task_defaults_to_sine() -> None:
    spec = parse_spec({})
    assert isinstance(spec, SineJobSpec)
    config = spec.meta_config()
    assert (config.rounds, config.meta_batch_size) == (spec.rounds, spec.meta_batch_size)
    assert config.inner.steps == spec.inner_steps and config.inner.lr == spec.inner_lr
    assert spec.eval_step_counts() == [0, 1, spec.inner_steps, spec.eval_steps]


def test_an_image_job_needs_only_task_and_data() -> None:
    spec = parse_spec({"task": "omniglot", "data": "omniglot/"})
    assert isinstance(spec, OmniglotJobSpec)
    assert (spec.ways, spec.shots, spec.inner_optimizer) == (5, 10, "adam")
    assert spec.task_options("prepared.pt") == {
        "dataset": "prepared.pt",
        "ways": 5,
        "shots": 10,
        "queries": 5,
    }


def test_gpus_per_worker_is_a_fraction_of_one_gpu_or_whole_gpus() -> None:
    assert parse_spec({}).gpus_per_worker == 0
    assert parse_spec({"gpus_per_worker": 0.25}).gpus_per_worker == 0.25
    assert parse_spec({"gpus_per_worker": 2}).gpus_per_worker == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"task": "imagenet"}, "does not match any of the expected tags: 'sine', 'omniglot'"),
        ({"inner_step": 5}, "Extra inputs are not permitted"),
        ({"inner_steps": -1}, "greater than or equal to 1"),
        ({"inner_lr": float("nan")}, "finite number"),
        ({"outer_lr": float("inf")}, "finite number"),
        ({"inner_optimizer": "rmsprop"}, "'sgd' or 'adam'"),
        ({"shots": 5, "inner_batch_size": 10}, "cannot exceed the 5 examples"),
        ({"outer_lr": 0.1, "outer_lr_final": 0.5}, "must not exceed outer_lr"),
        ({"rounds": "many"}, "valid integer"),
        ({"task": "omniglot"}, "Field required"),
        ({"data": "x"}, "Extra inputs are not permitted"),
        ({"task": "omniglot", "data": "x", "ways": 1}, "greater than or equal to 2"),
        ({"task": "omniglot", "data": "x", "ways": 51}, "less than or equal to 50"),
        (
            {"task": "omniglot", "data": "x", "eval_steps": 1000, "eval_shots": [20]},
            "one held-out task of eval_steps × 20 ways × 20 shots = 400,000",
        ),
        ({"gpus_per_worker": 1.5}, "above 1 it must be a whole number"),
        ({"gpus_per_worker": -0.5}, "greater than or equal to 0"),
        ({"algorithm": "anil"}, "'reptile', 'fomaml' or 'maml'"),
        ({"tail_shots": 5}, "tail_shots is for fomaml and maml"),
        ({"algorithm": "maml"}, "maml needs a query set: set tail_shots"),
        ({"algorithm": "fomaml", "tail_shots": 50}, "fewer than the 50 per class"),
        ({"algorithm": "fomaml", "tail_shots": 45}, "less the 45 of its tail"),
        ({"algorithm": "fomaml", "tail_shots": 5, "inner_steps": 1}, "needs inner_steps ≥ 2"),
        (
            {"algorithm": "maml", "tail_shots": 5, "inner_optimizer": "adam"},
            "use inner_optimizer sgd",
        ),
        (
            {"algorithm": "maml", "tail_shots": 5, "compile_inner_loop": True},
            "compile_inner_loop false",
        ),
        (
            {"algorithm": "maml", "tail_shots": 5, "meta_batch_size": 300, "inner_steps": 40},
            "maml holds the graph of 120,000 example-steps at once (inner_steps × "
            "inner_batch_size × meta_batch_size), over this service's limit of 100,000",
        ),
        (
            {"task": "omniglot", "data": "x", "algorithm": "maml", "tail_shots": 2},
            "use inner_optimizer sgd",
        ),
        (
            {
                "task": "omniglot",
                "data": "x",
                "algorithm": "maml",
                "tail_shots": 2,
                "inner_optimizer": "sgd",
                "inner_steps": 30,
            },
            "maml holds the graph of 300 example-steps at once (inner_steps × "
            "inner_batch_size), over this service's limit of 250",
        ),
        (  # 40 names of 200 characters: each field is an MLflow param, which MLflow refuses
            {"task": "omniglot", "data": "x", "held_out": ["a" * 200] * 40},
            "held_out takes 8,160 characters as an MLflow param, over MLflow's limit of 6,000",
        ),
    ],
)
def test_bad_fields_are_rejected_with_a_message(body: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as error:
        parse_spec(body)
    assert message in str(error.value)


def test_a_yaml_job_file_reads_exponent_floats_as_numbers(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("rounds: 10\ninner_lr: 1e-3\nouter_lr: 5.0E-1\n")
    spec = parse_spec(read_job_file(str(job)))
    assert (spec.inner_lr, spec.outer_lr, spec.rounds) == (0.001, 0.5, 10)


def test_the_param_length_limit_is_mlflows() -> None:
    assert MAX_PARAM_VALUE_LENGTH == MAX_PARAM_VAL_LENGTH


def test_a_20_way_image_job_runs_on_its_defaults() -> None:
    spec = parse_spec({"task": "omniglot", "data": "x", "ways": 20})
    assert isinstance(spec, OmniglotJobSpec) and spec.eval_tasks == 50
    # its held-out tasks go to the actors in calls within the work limit
    assert spec.eval_batches(20, 5, 1000) * spec.eval_steps * 20 * 5 <= spec.max_work
    # small tasks, far within the work limit, still go a few dozen per worker a call
    assert spec.eval_batches(5, 1, 1000) == spec.eval_tasks_per_actor * spec.num_workers


def test_the_ways_limit_is_the_models() -> None:
    assert MAX_WAYS == fewshot.MAX_WAYS


def test_the_algorithm_and_its_tail_reach_the_meta_config() -> None:
    assert SineJobSpec().meta_config().algorithm.name == "reptile"
    config = parse_spec({"algorithm": "maml", "tail_shots": 10}).meta_config().algorithm
    assert (config.name, config.tail_shots) == ("maml", 10)
    image = parse_spec({"task": "omniglot", "data": "x", "algorithm": "fomaml", "tail_shots": 5})
    assert image.meta_config().algorithm.tail_shots == 5  # 5 of 10 shots a class: batch 10 fits
