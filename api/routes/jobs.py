"""Meta-training jobs: submit, list, follow (status and SSE), cancel, resume, weights."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api import errors
from api.deps import ControllerDep
from api.progress import progress_events
from api.routes.weights import WEIGHTS_RESPONSES, WeightsFormat, weights_response
from api.schemas import JobCreate, JobPublic, JobsPublic
from service.controller import Controller
from service.records import JobRecord

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=errors.RESPONSES)

EVENT_POLL_S = 0.25


def _public(record: JobRecord, controller: Controller) -> JobPublic:
    return JobPublic.of(record, controller.settings.tracking_uri)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def create_job(job: JobCreate, controller: ControllerDep, response: Response) -> JobPublic:
    record = controller.submit(job)
    response.headers["Location"] = f"/v1/jobs/{record.id}"
    return _public(record, controller)


@router.get("", response_model=JobsPublic)
def list_jobs(controller: ControllerDep) -> JobsPublic:
    records = [_public(record, controller) for record in controller.jobs()]
    return JobsPublic(data=records, count=len(records))


@router.get("/{job_id}", response_model=JobPublic)
def read_job(job_id: str, controller: ControllerDep) -> JobPublic:
    return _public(controller.get(job_id), controller)


@router.post("/{job_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def cancel_job(job_id: str, controller: ControllerDep) -> JobPublic:
    return _public(controller.cancel(job_id), controller)


@router.post("/{job_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=JobPublic)
def resume_job(job_id: str, controller: ControllerDep) -> JobPublic:
    return _public(controller.resume(job_id), controller)


def _existing_job(job_id: str, controller: ControllerDep) -> str:
    """Resolve the job before a stream starts, so an unknown id is a 404 and not a cut stream."""
    return controller.get(job_id).id


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: Annotated[str, Depends(_existing_job)], controller: ControllerDep
) -> AsyncIterator[ServerSentEvent]:
    """`progress` events (the job record) whenever the round or state changes, then `end`."""
    async for event in progress_events(
        lambda: controller.get(job_id),
        lambda record: (record.state, record.round, record.mlflow.run_id, record.mlflow.status),
        lambda record: _public(record, controller),
        EVENT_POLL_S,
    ):
        yield event


@router.get("/{job_id}/weights", responses=WEIGHTS_RESPONSES, response_class=Response)
def job_weights(
    job_id: str,
    controller: ControllerDep,
    format: Annotated[WeightsFormat, Query()] = "safetensors",
) -> Response:
    """The current meta-weights φ (the latest round's while the job runs)."""
    params, round_reached = controller.weights(job_id)
    return weights_response(params, round_reached, format, f"job-{job_id}")
