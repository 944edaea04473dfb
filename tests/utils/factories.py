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
