"""Request bodies for the API tests: small jobs, sine tasks and images to adapt to."""

import base64
import io
from typing import Any

from PIL import Image

SINE_JOB: dict[str, Any] = {"rounds": 20, "meta_batch_size": 4, "seed": 7}
OMNIGLOT_JOB: dict[str, Any] = {
    "task": "omniglot",
    "data": "omniglot",
    "ways": 3,
    "shots": 2,
    "eval_shots": [1],
    "inner_batch_size": 6,
}


def sine_task(points: int = 5, **options: Any) -> dict[str, Any]:
    """An adaptation body: `points` support points of a line, two query inputs; `options`
    add fields or replace these."""
    xs = [float(i) for i in range(points)]
    return {
        "support": {"x": xs, "y": [2 * x - 1 for x in xs]},
        "query": {"x": [0.5, 1.5]},
        **options,
    }


def png(shade: int, side: int = 28) -> bytes:
    """A grey square as PNG bytes, one shade per image so that each is told apart."""
    buffer = io.BytesIO()
    Image.new("L", (side, side), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


# A sine sweep that ASHA prunes: two inner step sizes that learn and two too small to, so the
# trials that reach the first rung (round 2) behind a better one stop there. Trials start in
# grid order, two at a time: the small step sizes come to the rung after a better trial's.
SINE_SWEEP: dict[str, Any] = {
    "base": {
        "rounds": 8,
        "eval_every": 2,
        "meta_batch_size": 4,
        "eval_tasks": 4,
        "num_workers": 1,
        "seed": 3,
    },
    "space": {"inner_lr": {"grid": [0.02, 0.01, 0.0001, 0.00005]}},
    "metric": "eval_mse_after_32",
    "mode": "min",
    "trials": 4,
    "max_concurrent": 2,
    "scheduler": "asha",
    "grace_period": 2,
    "reduction_factor": 2,
}
