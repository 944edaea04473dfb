"""Adaptations: a few labelled examples of a new task in, adapted weights and predictions out."""

from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from api.deps import ControllerDep
from api.routes.weights import WEIGHTS_RESPONSES, WeightsFormat, weights_response
from api.schemas import AdaptationPublic, SineAdaptationCreate

router = APIRouter(tags=["adaptations"])


@router.post(
    "/v1/jobs/{job_id}/adaptations",
    status_code=status.HTTP_201_CREATED,
    response_model=AdaptationPublic,
)
def create_adaptation(
    job_id: str, body: SineAdaptationCreate, controller: ControllerDep, response: Response
) -> AdaptationPublic:
    """Adapt the job's current φ (the latest round's while it runs) to the support set."""
    record = controller.adapt(
        job_id,
        support_inputs=body.support.x,
        support_targets=body.support.y,
        query_inputs=body.query.x,
        steps=body.steps,
        lr=body.lr,
    )
    response.headers["Location"] = f"/v1/adaptations/{record.id}"
    return record


@router.get("/v1/adaptations/{adaptation_id}", response_model=AdaptationPublic)
def read_adaptation(adaptation_id: str, controller: ControllerDep) -> AdaptationPublic:
    return controller.adaptation(adaptation_id)


@router.get(
    "/v1/adaptations/{adaptation_id}/weights", responses=WEIGHTS_RESPONSES, response_class=Response
)
def adaptation_weights(
    adaptation_id: str,
    controller: ControllerDep,
    format: Annotated[WeightsFormat, Query()] = "safetensors",
) -> Response:
    record = controller.adaptation(adaptation_id)
    params = controller.adaptation_weights(adaptation_id)
    return weights_response(params, record.round, format, f"adaptation-{adaptation_id}")
