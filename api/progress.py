"""The `progress` stream of a job or a sweep: one polling loop for both resources' SSE routes."""

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Protocol, TypeVar

from fastapi.sse import ServerSentEvent
from pydantic import BaseModel

from service.records import JobState


class Followed(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def state(self) -> JobState: ...


R = TypeVar("R", bound=Followed)


async def progress_events(
    read: Callable[[], R],
    key: Callable[[R], object],
    public: Callable[[R], BaseModel],
    poll_s: float,
) -> AsyncIterator[ServerSentEvent]:
    """A `progress` event (the record's public answer) whenever `key` of the record changes,
    polled every `poll_s`, then `end` once its state is terminal."""
    last = None
    while True:
        record = read()
        if (current := key(record)) != last:
            last = current
            yield ServerSentEvent(data=public(record).model_dump(mode="json"), event="progress")
        if record.state.terminal:
            yield ServerSentEvent(data={"id": record.id, "state": record.state.value}, event="end")
            return
        await asyncio.sleep(poll_s)
