"""One adaptation body and one adaptation config, whether the API or the pyfunc adapts."""

import base64
import io

import pandas as pd
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image
from pydantic import TypeAdapter, ValidationError

from reptile.inner import InnerConfig
from reptile.params import init_params
from reptile.tasks import make_family
from reptile.tasks.fewshot import fewshot_model
from service.adaptation import ImageShape, Source, adapt, adaptation_config
from service.adaptation_schemas import (
    ImageAdaptationCreate,
    SineAdaptationCreate,
    parse_adaptation,
)
from service.records import ClassPrediction
from service.registry import ReptileModel
from service.specs import OmniglotJobSpec, SineJobSpec

SPEC = SineJobSpec(eval_steps=12, inner_lr=0.03, inner_optimizer="adam")
POINTS = {"support": {"x": [-2.0, 0.0, 2.0], "y": [-1.0, 0.0, 1.0]}, "query": {"x": [1.0]}}


def _pyfunc(source: Source) -> ReptileModel:
    """The registered model's pyfunc around `source` (what `load_context` sets up)."""
    model = ReptileModel()
    model.source = source
    return model


def test_an_adaptation_learns_as_the_jobs_eval_config_with_the_bodys_steps_and_lr() -> None:
    assert SPEC.eval_config() == InnerConfig(steps=12, lr=0.03, optimizer="adam")
    assert SPEC.inner_config() == InnerConfig(steps=5, lr=0.03, optimizer="adam", batch_size=10)
    body = parse_adaptation(SPEC, POINTS, strict=True)
    assert adaptation_config(SPEC, body) == SPEC.eval_config()
    steps = parse_adaptation(SPEC, {**POINTS, "steps": 3}, strict=True)
    assert adaptation_config(SPEC, steps) == InnerConfig(steps=3, lr=0.03, optimizer="adam")
    lr = parse_adaptation(SPEC, {**POINTS, "lr": 0.5}, strict=True)
    assert adaptation_config(SPEC, lr) == InnerConfig(steps=12, lr=0.5, optimizer="adam")


def test_a_pyfunc_row_is_the_apis_body() -> None:
    phi = init_params(make_family("sine").make_model(), 0)
    source = Source(SPEC, phi, job_id="0" * 32, round=10)
    row = {"support_x": [-2.0, 0.0, 2.0], "support_y": [-1.0, 0.0, 1.0], "query_x": [1.0]}
    (served,) = _pyfunc(source).predict(None, pd.DataFrame([{**row, "steps": 4}]))  # type: ignore[arg-type]
    expected = adapt(source, parse_adaptation(SPEC, {**POINTS, "steps": 4}, strict=True))
    assert served["predictions"] == expected.predictions
    assert (served["steps"], served["lr"]) == (4, 0.03) == (expected.steps, expected.lr)
    assert isinstance(parse_adaptation(SPEC, POINTS, strict=True), SineAdaptationCreate)

    # the body's own checks, with its field names
    for bad, message in (
        ({**row, "support_y": [1.0]}, "support.x has 3 points but support.y has 1"),
        ({**row, "support_x": [], "support_y": []}, "support.x: List should have at least 1"),
        ({**row, "steps": 5000}, "steps: Input should be less than or equal to 1000"),
    ):
        with pytest.raises(MlflowException, match=message):
            _pyfunc(source).predict(None, pd.DataFrame([bad]))  # type: ignore[arg-type]


def _png(seed: int) -> str:
    pixels = torch.randint(0, 256, (28, 28), generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="L").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_images_are_decoded_and_checked_in_one_place_for_the_api_and_the_pyfunc() -> None:
    spec = OmniglotJobSpec(task="omniglot", data="unused", ways=2, eval_steps=3)
    torch.manual_seed(0)
    phi = {n: p.detach() for n, p in fewshot_model(2, 1, 28).named_parameters()}
    source = Source(spec, phi, job_id="a" * 32, round=1, image_shape=ImageShape(28, 1))
    images = [_png(1), _png(2)]
    body = {"support": {"images": images, "labels": ["a", "b"]}, "query": {"images": images}}
    parsed = parse_adaptation(spec, body, strict=True)
    assert isinstance(parsed, ImageAdaptationCreate)
    assert parsed.support.images[0] == base64.b64decode(images[0]) and parsed.examples == 2
    row = {"support_images": images, "support_labels": ["a", "b"], "query_images": images}
    (served,) = _pyfunc(source).predict(None, pd.DataFrame([row]))  # type: ignore[arg-type]
    expected = adapt(source, parsed)
    predictions = TypeAdapter(list[ClassPrediction]).validate_python(expected.predictions)
    assert served["predictions"] == [p.model_dump() for p in predictions]
    assert served["steps"] == 3

    no_queries = {"support_images": images, "support_labels": ["a", "b"]}
    (served,) = _pyfunc(source).predict(None, pd.DataFrame([no_queries]))  # type: ignore[arg-type]
    assert served["predictions"] == []
    for bad, message in (
        ({**row, "support_images": ["%%%", images[1]]}, "support.images.0: .*invalid base64"),
        ({**row, "support_labels": ["a"]}, "2 support images but 1 labels"),
        ({**row, "support_labels": ["a", ""]}, "support.labels.1: String should have at least"),
    ):
        with pytest.raises(MlflowException, match=message):
            _pyfunc(source).predict(None, pd.DataFrame([bad]))  # type: ignore[arg-type]
        with pytest.raises(ValidationError):  # the API's JSON body fails alike
            support = {"images": bad["support_images"], "labels": bad["support_labels"]}
            parse_adaptation(spec, {"support": support}, strict=True)


def test_a_model_trained_n_way_adapts_to_any_number_of_classes() -> None:
    spec = OmniglotJobSpec(task="omniglot", data="unused", ways=5, eval_steps=20)
    torch.manual_seed(0)
    phi = {n: p.detach() for n, p in fewshot_model(5, 1, 28).named_parameters()}
    source = Source(spec, phi, job_id="a" * 32, round=1, image_shape=ImageShape(28, 1))
    for ways in (2, 5, 20):
        images = [_png(seed) for seed in range(ways)]
        labels = [f"class{i}" for i in range(ways)]
        body = {"support": {"images": images, "labels": labels}, "query": {"images": images}}
        outcome = adapt(source, parse_adaptation(spec, body, strict=True))
        assert outcome.weights["head.weight"].shape[0] == ways
        assert outcome.support_loss["after"] < outcome.support_loss["before"]
        predictions = TypeAdapter(list[ClassPrediction]).validate_python(outcome.predictions)
        assert all(set(p.probabilities) == set(labels) for p in predictions)
        # 20 steps on its own support set: each support image is told apart from the others
        assert [p.label for p in predictions] == labels
