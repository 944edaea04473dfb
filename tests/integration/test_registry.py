"""Registered Reptile models in a real SQLite MLflow store: register, resolve, load, predict."""

import base64
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from reptile.params import init_params
from reptile.tasks import make_family
from reptile.tasks.fewshot import fewshot_model
from service.adaptation import ImageShape, Source, adapt
from service.adaptation_schemas import ImageAdaptationCreate, SineAdaptationCreate
from service.registry import ModelNotFound, Registry, RegistryError, register
from service.run_writer import RunWriter
from service.specs import OmniglotJobSpec, SineJobSpec
from service.tracking import Tracker

SUPPORT_X = [-4.0, -2.0, 0.0, 1.0, 3.0]
SUPPORT_Y = [1.2, -0.8, 0.3, 1.1, -0.4]
QUERY_X = [-1.0, 0.5, 2.0]


def _registered(uri: str, tmp_path: Path, source: Source, evaluation: dict[str, float]) -> str:
    """Register `source` the way a succeeded job does; returns its models:/ URI."""
    writer = RunWriter(
        tracking_uri=uri,
        experiment=f"reptile-{source.spec.task}",
        artifact_location=(tmp_path / "artifacts").as_uri(),
        run_name="registry-test",
        params={},
        tags={"job_id": source.job_id},
    )
    tracker = Tracker(writer, tmp_path / "staging")
    register(tracker, source, evaluation)
    assert tracker.finish("FINISHED", timeout=120)
    assert tracker.model is not None
    return tracker.model.uri


def _sine_source(seed: int) -> Source:
    phi = init_params(make_family("sine").make_model(), seed)
    return Source(SineJobSpec(seed=seed), phi, job_id=f"{seed:032x}", round=3000)


def test_a_registered_sine_model_predicts_in_a_fresh_process(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    first = _registered(
        uri, tmp_path, _sine_source(1), {"round": 3000.0, "eval_mse_after_32": 0.04}
    )
    assert first == "models:/reptile-sine/1"
    source = _sine_source(2)
    assert (
        _registered(uri, tmp_path, source, {"eval_mse_after_32": 0.03}) == "models:/reptile-sine/2"
    )

    client = MlflowClient(uri)
    version = client.get_model_version("reptile-sine", "2")
    assert version.tags == {"job_id": source.job_id, "round": "3000", "eval_mse_after_32": "0.03"}
    assert version.run_id and client.get_run(version.run_id).data.tags["job_id"] == source.job_id

    # what `mlflow models serve -m models:/reptile-sine@latest --env-manager local` runs
    script = (
        "import json, mlflow, pandas as pd\n"
        "model = mlflow.pyfunc.load_model('models:/reptile-sine@latest')\n"
        f"rows = pd.DataFrame([{{'support_x': {SUPPORT_X}, 'support_y': {SUPPORT_Y}, "
        f"'query_x': {QUERY_X}, 'steps': 16}}])\n"
        "print(json.dumps(model.predict(rows)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    (served,) = json.loads(result.stdout.strip().splitlines()[-1])
    body = {"support": {"x": SUPPORT_X, "y": SUPPORT_Y}, "query": {"x": QUERY_X}, "steps": 16}
    expected = adapt(source, SineAdaptationCreate.model_validate(body))
    assert served["steps"] == 16 and served["lr"] == 0.02  # the job's inner_lr by default
    assert served["predictions"] == pytest.approx(expected.predictions, abs=1e-6)
    assert served["support_loss"]["after"] < served["support_loss"]["before"]


def _png(seed: int) -> bytes:
    pixels = torch.randint(0, 256, (28, 28), generator=torch.Generator().manual_seed(seed))
    buffer = io.BytesIO()
    Image.fromarray(pixels.to(torch.uint8).numpy(), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_registered_image_model_loads_by_alias_version_and_latest(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = OmniglotJobSpec(task="omniglot", data="unused", ways=3, model_name="glyphs")
    torch.manual_seed(0)
    phi = {n: p.detach() for n, p in fewshot_model(3, 1, 28).named_parameters()}
    source = Source(spec, phi, job_id="a" * 32, round=1000, image_shape=ImageShape(28, 1))
    assert _registered(uri, tmp_path, source, {"eval_acc_3w1s": 0.9}) == "models:/glyphs/1"
    MlflowClient(uri).set_registered_model_alias("glyphs", "champion", "1")

    registry = Registry(uri)
    loaded = registry.source("models:/glyphs@champion")
    assert loaded.model == "models:/glyphs/1" and loaded.job_id == source.job_id
    assert loaded.image_shape == ImageShape(28, 1) and loaded.spec == spec
    assert registry.source("models:/glyphs@latest") is loaded  # one load per version
    assert all(torch.equal(loaded.phi[n], phi[n]) for n in phi)

    encoded = [base64.b64encode(_png(seed)).decode() for seed in (1, 2, 3)]
    task = ImageAdaptationCreate.model_validate(
        {
            "support": {"images": encoded, "labels": ["a", "b", "c"]},
            "query": {"images": [encoded[2], encoded[0]]},
            "steps": 5,
        }
    )
    served = adapt(loaded, task)
    expected = adapt(source, task)
    assert served.predictions == expected.predictions and len(served.predictions) == 2

    for missing in ("models:/nope@latest", "models:/glyphs/7", "models:/glyphs@nope"):
        with pytest.raises(ModelNotFound):
            registry.source(missing)
    for malformed in ("glyphs", "models:/glyphs", "models:/a/b/c", "runs:/x/model"):
        with pytest.raises(RegistryError):
            registry.source(malformed)
