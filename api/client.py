"""A typed Python client of the HTTP API, returning the API's own answer models.

    with ReptileClient("http://127.0.0.1:8000") as client:
        job = client.submit({"rounds": 500})
        for record in client.events(job.id):
            print(record.round, record.metrics.get("meta_loss_after"))
        adapted = client.adapt_points(job.id, x=[0, 1], y=[0.2, 0.9], query_x=[0.5])

Every error answer raises `ServiceError` with the status and the server's `detail`; a server
that cannot be reached raises httpx's own `TransportError`.
"""

import json
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from pydantic import BaseModel

from api.schemas import AdaptationPublic, JobPublic, SweepPublic

DEFAULT_URL = "http://127.0.0.1:8000"
URL_ENV = "REPTILE_URL"
TOKEN_ENV = "REPTILE_API_TOKEN"

Image = bytes | Path  # encoded PNG/JPEG bytes, or a file holding them


class ServiceError(Exception):
    """The service answered with an error status; `detail` is its explanation."""

    def __init__(self, status: int, detail: Any) -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"HTTP {status}: {_describe(detail)}")


def _describe(detail: Any) -> str:
    """A validation error list (422) as `field: message; …`, any other detail as text."""
    if isinstance(detail, list) and all(isinstance(d, dict) for d in detail):
        return "; ".join(
            f"{'.'.join(str(part) for part in d.get('loc', ()))}: {d.get('msg')}" for d in detail
        )
    return str(detail)


def _raise_for_status(response: httpx.Response) -> None:
    if response.is_success:
        return
    try:
        detail = response.json().get("detail", response.text)
    except (ValueError, AttributeError):  # not JSON, or JSON without a `detail` field
        detail = response.text or response.reason_phrase
    raise ServiceError(response.status_code, detail)


def server_sent_events(lines: Iterable[str]) -> Iterator[tuple[str, str]]:
    """The (event, data) pairs of an SSE stream's lines; comments (keep-alive pings) skipped."""
    data: list[str]
    event, data = "message", []
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            event = value
        elif field == "data":
            data.append(value)


class ReptileClient:
    """Synchronous client; `url` and `token` default to $REPTILE_URL and $REPTILE_API_TOKEN."""

    def __init__(
        self, url: str | None = None, *, token: str | None = None, timeout: float = 60.0
    ) -> None:
        url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        token = token or os.environ.get(TOKEN_ENV)
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url
        self._http = httpx.Client(base_url=url, headers=headers, timeout=timeout)

    def __enter__(self) -> "ReptileClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @contextmanager
    def _stream(self, url: str) -> Iterator[httpx.Response]:
        """A streamed GET whose error answers raise like any other request's."""
        with self._http.stream("GET", url) as response:
            if not response.is_success:
                response.read()
                _raise_for_status(response)
            yield response

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        _raise_for_status(response)
        return response

    # --- jobs ---------------------------------------------------------------------------
    def submit(self, spec: BaseModel | Mapping[str, Any]) -> JobPublic:
        """Queue a job; a mapping is validated by the server (unknown fields are a 422)."""
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        return JobPublic.model_validate_json(self._request("POST", "/v1/jobs", json=body).content)

    def get(self, job_id: str) -> JobPublic:
        return JobPublic.model_validate_json(self._request("GET", f"/v1/jobs/{job_id}").content)

    def jobs(self) -> list[JobPublic]:
        data = self._request("GET", "/v1/jobs").json()["data"]
        return [JobPublic.model_validate(record) for record in data]

    def cancel(self, job_id: str) -> JobPublic:
        """Ask the job to stop after its current round (the record may still read running)."""
        response = self._request("POST", f"/v1/jobs/{job_id}/cancel")
        return JobPublic.model_validate_json(response.content)

    def resume(self, job_id: str) -> JobPublic:
        response = self._request("POST", f"/v1/jobs/{job_id}/resume")
        return JobPublic.model_validate_json(response.content)

    def events(self, job_id: str) -> Iterator[JobPublic]:
        """The job's record each time its round or state changes, until it ends (SSE).

        The last record is terminal. Rounds faster than the server's polling are skipped.
        """
        with self._stream(f"/v1/jobs/{job_id}/events") as response:
            for event, data in server_sent_events(response.iter_lines()):
                if event == "progress":
                    yield JobPublic.model_validate(json.loads(data))
                elif event == "end":
                    return

    def wait(self, job_id: str, timeout: float | None = None, poll_s: float = 0.5) -> JobPublic:
        """Poll until the job is succeeded, failed or cancelled; TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            record = self.get(job_id)
            if record.state.terminal:
                return record
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {record.state.value} after {timeout}s")
            time.sleep(poll_s)

    def download_weights(self, job_id: str, path: Path) -> Path:
        """Save the job's current meta-weights φ (safetensors) to `path`."""
        return self._download(f"/v1/jobs/{job_id}/weights", path)

    # --- sweeps -------------------------------------------------------------------------
    def submit_sweep(self, spec: BaseModel | Mapping[str, Any]) -> SweepPublic:
        """Queue a sweep (`service.sweep_specs.SweepSpec`); the server validates a mapping."""
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        response = self._request("POST", "/v1/sweeps", json=body)
        return SweepPublic.model_validate_json(response.content)

    def sweep(self, sweep_id: str) -> SweepPublic:
        response = self._request("GET", f"/v1/sweeps/{sweep_id}")
        return SweepPublic.model_validate_json(response.content)

    def sweeps(self) -> list[SweepPublic]:
        data = self._request("GET", "/v1/sweeps").json()["data"]
        return [SweepPublic.model_validate(record) for record in data]

    def cancel_sweep(self, sweep_id: str) -> SweepPublic:
        """Stop the sweep's trials after their current round; no new trial starts."""
        response = self._request("POST", f"/v1/sweeps/{sweep_id}/cancel")
        return SweepPublic.model_validate_json(response.content)

    def resume_sweep(self, sweep_id: str) -> SweepPublic:
        response = self._request("POST", f"/v1/sweeps/{sweep_id}/resume")
        return SweepPublic.model_validate_json(response.content)

    def sweep_events(self, sweep_id: str) -> Iterator[SweepPublic]:
        """The sweep's record each time its state or a trial changes, until it ends (SSE)."""
        with self._stream(f"/v1/sweeps/{sweep_id}/events") as response:
            for event, data in server_sent_events(response.iter_lines()):
                if event == "progress":
                    yield SweepPublic.model_validate(json.loads(data))
                elif event == "end":
                    return

    # --- adaptations --------------------------------------------------------------------
    def adapt_points(
        self,
        job_id: str,
        *,
        x: Sequence[float],
        y: Sequence[float],
        query_x: Sequence[float],
        steps: int | None = None,
        lr: float | None = None,
    ) -> AdaptationPublic:
        """Adapt a sine job's φ to the support points (x, y) and predict at `query_x`."""
        body: dict[str, Any] = {
            "support": {"x": list(x), "y": list(y)},
            "query": {"x": list(query_x)},
        }
        body.update(_options(steps, lr))
        response = self._request("POST", f"/v1/jobs/{job_id}/adaptations", json=body)
        return AdaptationPublic.model_validate_json(response.content)

    def adapt_images(
        self,
        job_id: str,
        support: Sequence[tuple[Image, str]],
        query: Sequence[Image] = (),
        *,
        steps: int | None = None,
        lr: float | None = None,
    ) -> AdaptationPublic:
        """Adapt an image job's φ to (image, label) pairs and classify the query images."""
        files = [("support", _upload(image, i)) for i, (image, _) in enumerate(support)]
        files += [("query", _upload(image, i)) for i, image in enumerate(query)]
        form: dict[str, Any] = {"labels": [label for _, label in support]}
        form.update({name: str(value) for name, value in _options(steps, lr).items()})
        response = self._request("POST", f"/v1/jobs/{job_id}/adaptations", files=files, data=form)
        return AdaptationPublic.model_validate_json(response.content)

    def adaptation(self, adaptation_id: str) -> AdaptationPublic:
        response = self._request("GET", f"/v1/adaptations/{adaptation_id}")
        return AdaptationPublic.model_validate_json(response.content)

    def download_adaptation_weights(self, adaptation_id: str, path: Path) -> Path:
        """Save an adaptation's adapted weights (safetensors) to `path`."""
        return self._download(f"/v1/adaptations/{adaptation_id}/weights", path)

    def _download(self, url: str, path: Path) -> Path:
        with self._stream(url) as response, path.open("wb") as file:
            for chunk in response.iter_bytes():
                file.write(chunk)
        return path


def _options(steps: int | None, lr: float | None) -> dict[str, int | float]:
    """The adaptation options that were given (the server defaults the rest to the job's)."""
    options: dict[str, int | float] = {}
    if steps is not None:
        options["steps"] = steps
    if lr is not None:
        options["lr"] = lr
    return options


def _upload(image: Image, index: int) -> tuple[str, bytes]:
    if isinstance(image, Path):
        return image.name, image.read_bytes()
    return f"image-{index}", image
