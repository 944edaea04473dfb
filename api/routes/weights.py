"""Serving weights as safetensors (default) or JSON (`?format=json`)."""

from typing import Literal

from fastapi import Response

from api.schemas import WeightsJSON
from reptile.params import Params
from service.weights import weights_to_bytes

WeightsFormat = Literal["safetensors", "json"]
SAFETENSORS = "application/octet-stream"

WEIGHTS_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "safetensors bytes, or JSON with ?format=json",
        "content": {
            SAFETENSORS: {},
            "application/json": {"schema": WeightsJSON.model_json_schema()},
        },
    }
}


def weights_response(
    params: Params, round_reached: int | None, fmt: WeightsFormat, name: str
) -> Response:
    if fmt == "json":
        tensors = {
            n: {"shape": list(t.shape), "values": t.flatten().tolist()} for n, t in params.items()
        }
        body = WeightsJSON(round=round_reached, tensors=tensors)
        return Response(body.model_dump_json(), media_type="application/json")
    metadata = {"round": str(round_reached)} if round_reached is not None else None
    return Response(
        weights_to_bytes(params, metadata),
        media_type=SAFETENSORS,
        headers={"Content-Disposition": f'attachment; filename="{name}.safetensors"'},
    )
