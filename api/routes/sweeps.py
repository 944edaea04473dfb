"""Hyperparameter sweeps on Ray Tune: submit, list, follow (status and SSE), cancel, resume."""

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Response, status
from fastapi.sse import EventSourceResponse, ServerSentEvent

from api import errors
from api.deps import SweepsDep
from api.progress import progress_events
from api.schemas import SweepCreate, SweepPublic, SweepsPublic
from service.records import SweepRecord
from service.sweeps import Sweeps

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=errors.RESPONSES)

EVENT_POLL_S = 0.5


def _public(record: SweepRecord, sweeps: Sweeps) -> SweepPublic:
    return SweepPublic.of(record, sweeps.settings.tracking_uri)


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=SweepPublic)
def create_sweep(sweep: SweepCreate, sweeps: SweepsDep, response: Response) -> SweepPublic:
    record = sweeps.submit(sweep)
    response.headers["Location"] = f"/v1/sweeps/{record.id}"
    return _public(record, sweeps)


@router.get("", response_model=SweepsPublic)
def list_sweeps(sweeps: SweepsDep) -> SweepsPublic:
    records = [_public(record, sweeps) for record in sweeps.sweeps()]
    return SweepsPublic(data=records, count=len(records))


@router.get("/{sweep_id}", response_model=SweepPublic)
def read_sweep(sweep_id: str, sweeps: SweepsDep) -> SweepPublic:
    return _public(sweeps.get(sweep_id), sweeps)


@router.post("/{sweep_id}/cancel", status_code=status.HTTP_202_ACCEPTED, response_model=SweepPublic)
def cancel_sweep(sweep_id: str, sweeps: SweepsDep) -> SweepPublic:
    return _public(sweeps.cancel(sweep_id), sweeps)


@router.post("/{sweep_id}/resume", status_code=status.HTTP_202_ACCEPTED, response_model=SweepPublic)
def resume_sweep(sweep_id: str, sweeps: SweepsDep) -> SweepPublic:
    return _public(sweeps.resume(sweep_id), sweeps)


def _existing_sweep(sweep_id: str, sweeps: SweepsDep) -> str:
    """Resolve the sweep before a stream starts, so an unknown id is a 404, not a cut stream."""
    return sweeps.get(sweep_id).id


@router.get("/{sweep_id}/events", response_class=EventSourceResponse)
async def sweep_events(
    sweep_id: Annotated[str, Depends(_existing_sweep)], sweeps: SweepsDep
) -> AsyncIterator[ServerSentEvent]:
    """`progress` events (the sweep record) whenever its state or a trial changes, then `end`."""
    async for event in progress_events(
        lambda: sweeps.get(sweep_id),
        lambda record: (
            record.state,
            [(t.state, t.round) for t in record.trials],
            record.mlflow.run_id,
        ),
        lambda record: _public(record, sweeps),
        EVENT_POLL_S,
    ):
        yield event
