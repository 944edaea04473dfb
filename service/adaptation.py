"""Adapting φ to a task a user sends: sine points, or labelled images.

φ comes from a job (its latest weights) or from a registered model (`service.registry`); both
describe it as a `Source`, so the API and the MLflow pyfunc adapt through the same code. The
images of an upload go through the same decoding as the job's data set (size, channels,
Omniglot's inversion), so the adapted model sees what it was meta-trained on.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from reptile.evaluate import Adaptation, adapt_and_predict
from reptile.params import Params, is_finite
from reptile.tasks import Task, make_family
from reptile.tasks.fewshot import fewshot_loss, fewshot_model
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


@dataclass(frozen=True)
class Points:
    """A sine task: labelled support points and the inputs to predict."""

    x: list[float]
    y: list[float]
    query_x: list[float]


@dataclass(frozen=True)
class Images:
    """A classification task: labelled support images (PNG/JPEG bytes) and query images."""

    support: list[bytes]
    labels: list[str]
    query: list[bytes]


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
    family = make_family(spec.task, **spec.task_options(dataset))
    return ImageShape(family.image_size, family.channels)  # type: ignore[attr-defined]


def adapt(
    source: Source, inputs: Points | Images, *, steps: int | None, lr: float | None
) -> Outcome:
    """Adapt the source's φ to `inputs`; `steps` and `lr` default to the job's eval_steps and
    inner_lr."""
    spec = source.spec
    steps = steps if steps is not None else spec.eval_steps
    lr = lr if lr is not None else spec.inner_lr
    if isinstance(inputs, Points):
        if not isinstance(spec, SineJobSpec):
            raise AdaptationError(f"φ is from a {spec.task} job: send labelled images")
        return _adapt_points(spec, source.phi, inputs, steps, lr)
    if isinstance(spec, SineJobSpec) or source.image_shape is None:
        raise AdaptationError("φ is from a sine job: send support x/y points")
    return _adapt_images(spec, source.image_shape, source.phi, inputs, steps, lr)


def _adapt_points(spec: SineJobSpec, phi: Params, points: Points, steps: int, lr: float) -> Outcome:
    """Regression: `steps` full-batch steps on the (x, y) points, then predict `query_x`."""
    if len(points.x) != len(points.y):
        raise AdaptationError(f"support has {len(points.x)} x values but {len(points.y)} y values")
    if not points.x:
        raise AdaptationError("the support set is empty")
    family = make_family(spec.task, **spec.task_options())
    support = Task(
        inputs=torch.tensor(points.x, dtype=torch.float32).unsqueeze(1),  # (n, 1)
        targets=torch.tensor(points.y, dtype=torch.float32).unsqueeze(1),
    )
    queries = torch.tensor(points.query_x, dtype=torch.float32).unsqueeze(1)  # (q, 1)
    result = adapt_and_predict(
        family.loss,
        family.make_model(),
        phi,
        support,
        queries,
        steps=steps,
        lr=lr,
        optimizer=spec.inner_optimizer,
    )
    _check_finite(result, lr)
    return Outcome(
        weights=result.weights,
        steps=steps,
        lr=lr,
        support_loss={"before": result.loss_before, "after": result.loss_after},
        predictions=result.predictions.squeeze(1).tolist(),
    )


def _adapt_images(
    spec: ImageJobSpec, shape: ImageShape, phi: Params, images: Images, steps: int, lr: float
) -> Outcome:
    """Classification: the N distinct labels of the support set are the classes (N = ways)."""
    if len(images.labels) != len(images.support):
        raise AdaptationError(
            f"{len(images.support)} support images but {len(images.labels)} labels"
        )
    classes = list(dict.fromkeys(images.labels))  # in order of first appearance
    if len(classes) != spec.ways:
        raise AdaptationError(
            f"the job meta-trained {spec.ways}-way tasks; the support set has "
            f"{len(classes)} distinct labels {classes}"
        )
    invert = spec.task == "omniglot"
    support_task = Task(
        inputs=_decode_all(images.support, "support", shape, invert),
        targets=torch.tensor([classes.index(label) for label in images.labels]),
    )
    result = adapt_and_predict(
        fewshot_loss,
        fewshot_model(spec.ways, shape.channels, shape.size),
        phi,
        support_task,
        _decode_all(images.query, "query", shape, invert),
        steps=steps,
        lr=lr,
        optimizer=spec.inner_optimizer,
        transductive=spec.transductive,
    )
    _check_finite(result, lr)
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
        steps=steps,
        lr=lr,
        support_loss={"before": result.loss_before, "after": result.loss_after},
        predictions=predictions,
    )


def _check_finite(result: Adaptation, lr: float) -> None:
    """Raise AdaptationError if adapting diverged: non-finite numbers are no answer to send."""
    if not (
        math.isfinite(result.loss_after)
        and is_finite(result.weights)
        and bool(torch.isfinite(result.predictions).all())
    ):
        raise AdaptationError(
            f"the adaptation diverged (support loss {result.loss_after}) at lr={lr}: "
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
