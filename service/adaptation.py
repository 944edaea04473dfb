"""Adapting φ to a task a user sends: sine points, or labelled images.

φ comes from a job (its latest weights) or from a registered model (`service.registry`); both
describe it as a `Source`, and the task as a validated body (`service.adaptation_schemas`), so
the API and the MLflow pyfunc adapt through the same code, as the job's `eval_config` says
(with the body's `steps` and `lr` where it gives them: `adaptation_config`). The images of an
upload go through the same decoding as the job's data set (size, channels, Omniglot's
inversion), so the adapted model sees what it was meta-trained on.
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import torch

from reptile.evaluate import Adaptation, adapt_and_predict
from reptile.inner import InnerConfig
from reptile.params import Params, is_finite
from reptile.tasks import Task
from reptile.tasks.fewshot import MAX_WAYS, fewshot_loss, fewshot_model, with_ways
from service.adaptation_schemas import AdaptationCreate, ImageAdaptationCreate, SineAdaptationCreate
from service.datasets import DatasetError, decode_image
from service.records import ClassPrediction
from service.specs import AnyJobSpec, ImageJobSpec, SineJobSpec


class AdaptationError(ValueError):
    """An upload that cannot be adapted to; the message says what is wrong."""


@dataclass(frozen=True)
class ImageShape:
    """The geometry of an image job's prepared data: what uploads are decoded to."""

    size: int
    channels: int


@dataclass(frozen=True)
class Source:
    """What an adaptation starts from: a job's φ, or a registered model's."""

    spec: AnyJobSpec
    phi: Params
    job_id: str
    round: int  # the job's round whose φ this is
    image_shape: ImageShape | None = None  # image jobs only
    model: str | None = None  # "models:/<name>/<version>" when φ came from the registry
    run_id: str | None = None  # the MLflow run that trained φ, where known


@dataclass(frozen=True)
class Outcome:
    weights: Params
    steps: int
    lr: float
    support_loss: dict[str, float]  # {"before": …, "after": …}
    predictions: list[float] | list[ClassPrediction]


def image_shape(spec: AnyJobSpec, dataset: str | None) -> ImageShape | None:
    """An image job's geometry, read from its prepared data set; None for sine jobs."""
    if isinstance(spec, SineJobSpec):
        return None
    family = spec.family(dataset)
    return ImageShape(family.image_size, family.channels)


def adaptation_config(spec: AnyJobSpec, body: AdaptationCreate) -> InnerConfig:
    """How an adaptation learns: the job's `eval_config`, with the body's `steps` and `lr`
    where it gives them."""
    config = spec.eval_config()
    return replace(
        config,
        steps=config.steps if body.steps is None else body.steps,
        lr=config.lr if body.lr is None else body.lr,
    )


def adapt(source: Source, body: AdaptationCreate) -> Outcome:
    """Adapt the source's φ to the body's task, as `adaptation_config` says."""
    spec = source.spec
    config = adaptation_config(spec, body)
    if isinstance(body, SineAdaptationCreate):
        if not isinstance(spec, SineJobSpec):
            raise AdaptationError(f"φ is from a {spec.task} job: send labelled images")
        return _adapt_points(spec, source.phi, body, config)
    if isinstance(spec, SineJobSpec) or source.image_shape is None:
        raise AdaptationError("φ is from a sine job: send support x/y points")
    return _adapt_images(spec, source.image_shape, source.phi, body, config)


def _adapt_points(
    spec: SineJobSpec, phi: Params, body: SineAdaptationCreate, config: InnerConfig
) -> Outcome:
    """Regression: adapt on the (x, y) points, then predict the query x."""
    family = spec.family()
    support = Task(
        inputs=torch.tensor(body.support.x, dtype=torch.float32).unsqueeze(1),  # (n, 1)
        targets=torch.tensor(body.support.y, dtype=torch.float32).unsqueeze(1),
    )
    queries = torch.tensor(body.query.x, dtype=torch.float32).unsqueeze(1)  # (q, 1)
    result = adapt_and_predict(family.loss, family.make_model(), phi, support, queries, config)
    _check_finite(result, config)
    return Outcome(
        weights=result.weights,
        steps=config.steps,
        lr=config.lr,
        support_loss={"before": result.loss_before, "after": result.loss_after},
        predictions=result.predictions.squeeze(1).tolist(),
    )


def _adapt_images(
    spec: ImageJobSpec,
    shape: ImageShape,
    phi: Params,
    body: ImageAdaptationCreate,
    config: InnerConfig,
) -> Outcome:
    """Classification: the M distinct labels of the support set are the classes, for any
    2 ≤ M ≤ MAX_WAYS whatever the job's `ways` (`with_ways` builds φ's M-way head)."""
    labels = body.support.labels
    classes = list(dict.fromkeys(labels))  # in order of first appearance
    if not 2 <= len(classes) <= MAX_WAYS:
        raise AdaptationError(
            f"a support set needs 2 to {MAX_WAYS} distinct labels (classes); it has "
            f"{len(classes)}: {classes[:10]}"
        )
    invert = spec.task == "omniglot"
    support_task = Task(
        inputs=_decode_all(body.support.images, "support", shape, invert),
        targets=torch.tensor([classes.index(label) for label in labels]),
    )
    result = adapt_and_predict(
        fewshot_loss,
        fewshot_model(len(classes), shape.channels, shape.size),
        with_ways(phi, len(classes)),
        support_task,
        _decode_all(body.query.images, "query", shape, invert),
        config,
        transductive=spec.transductive,
    )
    _check_finite(result, config)
    probabilities = result.predictions.softmax(-1)  # (queries, ways)
    predictions = [
        ClassPrediction(
            label=classes[int(row.argmax())],
            probabilities={c: float(p) for c, p in zip(classes, row, strict=True)},
        )
        for row in probabilities
    ]
    return Outcome(
        weights=result.weights,
        steps=config.steps,
        lr=config.lr,
        support_loss={"before": result.loss_before, "after": result.loss_after},
        predictions=predictions,
    )


def _check_finite(result: Adaptation, config: InnerConfig) -> None:
    """Raise AdaptationError if adapting diverged: non-finite numbers are no answer to send."""
    if not (
        math.isfinite(result.loss_after)
        and is_finite(result.weights)
        and bool(torch.isfinite(result.predictions).all())
    ):
        raise AdaptationError(
            f"the adaptation diverged (support loss {result.loss_after}) at lr={config.lr}: "
            "try a smaller lr or fewer steps"
        )


def _decode_all(images: list[bytes], part: str, shape: ImageShape, invert: bool) -> torch.Tensor:
    """Uploaded images as float (n, channels, size, size) in [0, 1]."""
    decoded = []
    for index, data in enumerate(images):
        try:
            decoded.append(
                decode_image(
                    data, shape.size, shape.channels, invert=invert, where=f"{part}[{index}]"
                )
            )
        except DatasetError as error:
            raise AdaptationError(str(error)) from error
    if not decoded:
        return torch.empty(0, shape.channels, shape.size, shape.size)
    return torch.from_numpy(np.stack(decoded)).float() / 255
