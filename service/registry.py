"""A job's final φ as an MLflow model: registered on success, served long after the job.

The model is a pyfunc (`ReptileModel`) whose artifacts are φ (safetensors) and a JSON card
(the job's spec, id, round and, for images, the decoded geometry), so it adapts without the job's
record or data set: `mlflow.pyfunc.load_model("models:/reptile-sine@latest").predict(df)`, `mlflow
models serve`, and the service's `POST /v1/adaptations` all adapt through `service.adaptation`.
Its code is the installed `reptile-service` package (loaded with models-from-code, no pickle).
"""

import base64
import functools
import io
import math
import re
import tempfile
from dataclasses import replace
from importlib.metadata import version as package_version
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.types import ColSpec, DataType, Schema
from mlflow.types.schema import Array
from PIL import Image
from pydantic import BaseModel, ValidationError

from reptile.params import Params
from service.adaptation import AdaptationError, ImageShape, Source, adapt
from service.adaptation_schemas import parse_adaptation
from service.specs import MODEL_URI_PATTERN, JobSpec, SineJobSpec, registered_model_name
from service.tracking import Tracker
from service.weights import read_weights, write_weights

_NOT_FOUND = ErrorCode.Name(RESOURCE_DOES_NOT_EXIST)
_ENTRY_POINT = Path(__file__).with_name("registry_model.py")  # models-from-code: set_model(…)
_OPTIONS = [
    ColSpec(DataType.long, "steps", required=False),
    ColSpec(DataType.double, "lr", required=False),
]
_SIGNATURES = {
    "points": ModelSignature(
        inputs=Schema(
            [
                ColSpec(Array(DataType.double), "support_x"),
                ColSpec(Array(DataType.double), "support_y"),
                ColSpec(Array(DataType.double), "query_x"),
                *_OPTIONS,
            ]
        )
    ),
    "images": ModelSignature(
        inputs=Schema(
            [
                ColSpec(Array(DataType.string), "support_images"),  # base64 PNG/JPEG
                ColSpec(Array(DataType.string), "support_labels"),
                ColSpec(Array(DataType.string), "query_images", required=False),
                *_OPTIONS,
            ]
        )
    ),
}


class ModelNotFound(LookupError):
    """No registered model, version or alias for that URI."""


class RegistryError(ValueError):
    """A model URI that is malformed, or names a model this service cannot adapt."""


class ModelCard(BaseModel):
    """What the registered φ is: the `spec` artifact of the model."""

    job_id: str
    round: int
    spec: JobSpec
    image_size: int | None = None
    channels: int | None = None

    @classmethod
    def of(cls, source: Source) -> "ModelCard":
        shape = source.image_shape
        return cls(
            job_id=source.job_id,
            round=source.round,
            spec=source.spec,
            image_size=shape.size if shape else None,
            channels=shape.channels if shape else None,
        )

    def source(self, phi: Params) -> Source:
        shape = None
        if self.image_size is not None and self.channels is not None:
            shape = ImageShape(self.image_size, self.channels)
        return Source(self.spec, phi, self.job_id, self.round, shape)


class ReptileModel(PythonModel):
    """Adapts φ to each row's support set, then predicts its queries.

    Sine rows: `support_x`, `support_y`, `query_x` (lists of floats). Image rows:
    `support_images` (base64), `support_labels`, `query_images`. Optional `steps` and `lr`
    (default: the job's eval_steps and inner_lr). One result per row: `predictions`,
    `support_loss` {before, after}, `steps`, `lr`, as in the service's adaptation records.
    """

    def load_context(self, context: PythonModelContext) -> None:
        card = ModelCard.model_validate_json(Path(context.artifacts["spec"]).read_bytes())
        self.source = card.source(read_weights(Path(context.artifacts["phi"])))

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        results = []
        for row in model_input.to_dict("records"):
            try:
                body = parse_adaptation(self.source.spec, _body(row), strict=False)
                outcome = adapt(self.source, body)
            except ValidationError as error:
                raise MlflowException(_problems(error), INVALID_PARAMETER_VALUE) from error
            except AdaptationError as error:
                raise MlflowException(str(error), INVALID_PARAMETER_VALUE) from error
            results.append(
                {
                    "predictions": [
                        p if isinstance(p, float) else p.model_dump() for p in outcome.predictions
                    ],
                    "support_loss": outcome.support_loss,
                    "steps": outcome.steps,
                    "lr": outcome.lr,
                }
            )
        return results


def _body(row: dict[str, Any]) -> dict[str, Any]:
    """One DataFrame row in the form of an adaptation body (`service.adaptation_schemas`),
    its columns in their places: the body's checks and base64 decoding are the API's."""
    if "support_x" in row:
        body: dict[str, Any] = {
            "support": {"x": _listed(row["support_x"]), "y": _listed(row["support_y"])},
            "query": {"x": _listed(row["query_x"])},
        }
    else:
        body = {
            "support": {
                "images": _listed(row["support_images"]),
                "labels": _listed(row["support_labels"]),
            }
        }
        if not _missing(row.get("query_images")):
            body["query"] = {"images": _listed(row["query_images"])}
    for option in ("steps", "lr"):
        if not _missing(row.get(option)):
            value = row[option]
            body[option] = value.item() if isinstance(value, np.generic) else value
    return body


def _missing(value: Any) -> bool:
    """An optional column left out (absent, or NaN where other rows have it)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def _listed(value: Any) -> Any:
    """A column's array (numpy, from MLflow's schema enforcement) as a plain list."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _problems(error: ValidationError) -> str:
    """A row's validation errors in one line, each with where it is in the body."""
    return "; ".join(
        f"{'.'.join(str(part) for part in e['loc'])}: {e['msg']}" for e in error.errors()
    )


def save_model(directory: Path, source: Source) -> None:
    """Write `source` as an MLflow pyfunc model directory."""
    with tempfile.TemporaryDirectory() as scratch:
        phi, card = Path(scratch) / "phi.safetensors", Path(scratch) / "spec.json"
        write_weights(phi, source.phi)
        card.write_text(ModelCard.of(source).model_dump_json(indent=2))
        mlflow.pyfunc.save_model(
            str(directory),
            python_model=str(_ENTRY_POINT),
            artifacts={"phi": str(phi), "spec": str(card)},
            signature=_SIGNATURES["points" if isinstance(source.spec, SineJobSpec) else "images"],
            input_example=_example(source),
            pip_requirements=[f"reptile-service=={package_version('reptile-service')}"],
        )


def _example(source: Source) -> pd.DataFrame:
    """A one-row input for the model's page (MLflow also runs it once to check the model)."""
    if isinstance(source.spec, SineJobSpec):
        row: dict[str, Any] = {"support_x": [-2.0, 0.0, 2.0], "support_y": [-1.0, 0.0, 1.0]}
        row["query_x"] = [1.0]
    else:
        assert source.image_shape is not None
        buffer = io.BytesIO()
        mode = "L" if source.image_shape.channels == 1 else "RGB"
        Image.new(mode, (source.image_shape.size,) * 2).save(buffer, format="PNG")
        blank = base64.b64encode(buffer.getvalue()).decode()
        row = {
            "support_images": [blank] * source.spec.ways,
            "support_labels": [f"class{i}" for i in range(source.spec.ways)],
            "query_images": [blank],
        }
    return pd.DataFrame([{**row, "steps": 1}])


def register(tracker: Tracker, source: Source, evaluation: dict[str, float]) -> None:
    """Queue `source` (a succeeded job's final φ) for registration in the job's run.

    The final evaluation metrics become the version's tags; the run holds everything else.
    """
    name = registered_model_name(source.spec)
    tags = {"job_id": source.job_id, "round": str(source.round)}
    tags |= {key: f"{value:.6g}" for key, value in evaluation.items() if key != "round"}
    description = (
        f"Reptile {source.spec.task} meta-weights: job {source.job_id}, round {source.round}"
    )
    tracker.register_model(
        name, lambda directory: save_model(directory, source), tags=tags, description=description
    )


class Registry:
    """Registered models by URI, each version downloaded and loaded once."""

    def __init__(self, tracking_uri: str) -> None:
        self._tracking_uri = tracking_uri
        self._client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    def source(self, uri: str) -> Source:
        """The φ and card of the model version `uri` names (`models:/<name>/<version>` or
        `models:/<name>@<alias>`; `@latest` is the newest version)."""
        name, version = self.resolve(uri)
        return _load(self._tracking_uri, name, version)

    def resolve(self, uri: str) -> tuple[str, str]:
        match = re.fullmatch(MODEL_URI_PATTERN, uri)
        if match is None:
            raise RegistryError(
                f"{uri!r} is not models:/<name>/<version> or models:/<name>@<alias>"
            )
        name, version, alias = match.group("name", "version", "alias")
        try:
            if version is not None:
                found = self._client.get_model_version(name, version)
            else:
                found = self._client.get_model_version_by_alias(name, alias)
        except MlflowException as error:
            # MLflow answers a missing alias with INVALID_PARAMETER_VALUE; the URI's syntax was
            # checked above, so both codes mean "not there".
            if error.error_code in (_NOT_FOUND, ErrorCode.Name(INVALID_PARAMETER_VALUE)):
                raise ModelNotFound(f"no registered model version {uri}: {error.message}") from None
            raise
        return name, str(found.version)


@functools.lru_cache(maxsize=16)
def _load(tracking_uri: str, name: str, version: str) -> Source:
    uri = f"models:/{name}/{version}"
    # The version's own artifact URI (runs:/…): `models:/` downloads ignore an explicit
    # tracking URI in MLflow 3.17 and would read the process-wide one.
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    location = client.get_model_version_download_uri(name, version)
    with tempfile.TemporaryDirectory() as scratch:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=location, dst_path=scratch, tracking_uri=tracking_uri
        )
        model = mlflow.pyfunc.load_model(local).unwrap_python_model()
    if not isinstance(model, ReptileModel):
        raise RegistryError(f"{uri} is not a Reptile model (a {type(model).__name__})")
    run_id = client.get_model_version(name, version).run_id
    return replace(model.source, model=uri, run_id=run_id)
