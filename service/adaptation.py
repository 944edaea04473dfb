"""Adapting a job's φ to a task a user sends: sine points, or labelled images.

The images of an upload go through the same decoding as the job's data set (size, channels,
Omniglot's inversion), so the adapted model sees what it was meta-trained on.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch

from reptile.evaluate import Adaptation, adapt_and_predict
from reptile.params import Params, is_finite
from reptile.tasks import Task, make_family
from service.datasets import DatasetError, decode_image
from service.records import ClassPrediction
from service.specs import ImageJobSpec, SineJobSpec


class AdaptationError(ValueError):
    """An upload that cannot be adapted to; the message says what is wrong."""


@dataclass(frozen=True)
class Outcome:
    weights: Params
    support_loss: dict[str, float]  # {"before": …, "after": …}
    predictions: list[float] | list[ClassPrediction]


def adapt_points(
    spec: SineJobSpec,
    phi: Params,
    *,
    x: list[float],
    y: list[float],
    query_x: list[float],
    steps: int,
    lr: float,
) -> Outcome:
    """Regression: `steps` full-batch steps on the (x, y) points, then predict `query_x`."""
    family = make_family(spec.task, **spec.task_options())
    support = Task(
        inputs=torch.tensor(x, dtype=torch.float32).unsqueeze(1),  # (n, 1)
        targets=torch.tensor(y, dtype=torch.float32).unsqueeze(1),
    )
    queries = torch.tensor(query_x, dtype=torch.float32).unsqueeze(1)  # (q, 1)
    result = adapt_and_predict(
        family,
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
        support_loss={"before": result.loss_before, "after": result.loss_after},
        predictions=result.predictions.squeeze(1).tolist(),
    )


def adapt_images(
    spec: ImageJobSpec,
    dataset: str,
    phi: Params,
    *,
    support: list[bytes],
    labels: list[str],
    query: list[bytes],
    steps: int,
    lr: float,
) -> Outcome:
    """Classification: the N distinct labels of the support set are the classes (N = ways)."""
    if len(labels) != len(support):
        raise AdaptationError(f"{len(support)} support images but {len(labels)} labels")
    classes = list(dict.fromkeys(labels))  # in order of first appearance
    if len(classes) != spec.ways:
        raise AdaptationError(
            f"the job meta-trained {spec.ways}-way tasks; the support set has "
            f"{len(classes)} distinct labels {classes}"
        )
    family = make_family(spec.task, **spec.task_options(dataset))
    model = family.make_model()
    size, channels = family.image_size, family.channels  # type: ignore[attr-defined]
    support_task = Task(
        inputs=_decode_all(support, "support", size, channels, spec.task == "omniglot"),
        targets=torch.tensor([classes.index(label) for label in labels]),
    )
    queries = _decode_all(query, "query", size, channels, spec.task == "omniglot")
    result = adapt_and_predict(
        family,
        model,
        phi,
        support_task,
        queries,
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


def _decode_all(
    images: list[bytes], part: str, size: int, channels: int, invert: bool
) -> torch.Tensor:
    """Uploaded images as float (n, channels, size, size) in [0, 1]."""
    decoded = []
    for index, data in enumerate(images):
        try:
            decoded.append(
                decode_image(data, size, channels, invert=invert, where=f"{part}[{index}]")
            )
        except DatasetError as error:
            raise AdaptationError(str(error)) from error
    if not decoded:
        return torch.empty(0, channels, size, size)
    return torch.from_numpy(np.stack(decoded)).float() / 255
