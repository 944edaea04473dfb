"""Evaluations: a job's φ or a registered model scored on held-out tasks, on the actors.

`POST` answers 202 at once with the queued evaluation (its request checked against the model
and the data: a 422 says what is wrong); `GET /v1/evaluations/{id}` gives its state and, once
it has succeeded, the accuracy with its 95 % CI per (ways, shots) setting and its MLflow run.
"""

from fastapi import APIRouter, Response, status

from api import errors
from api.deps import ControllerDep
from api.schemas import EvaluationPublic, EvaluationsPublic
from service.evaluation_schemas import EvaluationCreate, ModelEvaluationCreate

router = APIRouter(tags=["evaluations"], responses=errors.RESPONSES)


@router.post(
    "/v1/jobs/{job_id}/evaluations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvaluationPublic,
)
def create_job_evaluation(
    job_id: str, body: EvaluationCreate, controller: ControllerDep, response: Response
) -> EvaluationPublic:
    """Score the job's current φ (the latest round's while it runs)."""
    record = controller.evaluations.submit(controller.job_source(job_id), body)
    response.headers["Location"] = f"/v1/evaluations/{record.id}"
    return EvaluationPublic.of(record)


@router.post(
    "/v1/evaluations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvaluationPublic,
    responses={404: {"description": "No such registered model, version or alias"}},
)
def create_model_evaluation(
    body: ModelEvaluationCreate, controller: ControllerDep, response: Response
) -> EvaluationPublic:
    """Score a registered model (MLflow model registry): the body of a job's evaluation plus
    `model`."""
    source = controller.model_source(body.model)
    request = EvaluationCreate(**body.model_dump(exclude={"model"}))
    record = controller.evaluations.submit(source, request)
    response.headers["Location"] = f"/v1/evaluations/{record.id}"
    return EvaluationPublic.of(record)


@router.get("/v1/evaluations", response_model=EvaluationsPublic)
def list_evaluations(controller: ControllerDep) -> EvaluationsPublic:
    records = [EvaluationPublic.of(r) for r in controller.evaluations.records()]
    return EvaluationsPublic(data=records, count=len(records))


@router.get("/v1/evaluations/{evaluation_id}", response_model=EvaluationPublic)
def read_evaluation(evaluation_id: str, controller: ControllerDep) -> EvaluationPublic:
    return EvaluationPublic.of(controller.evaluations.get(evaluation_id))
