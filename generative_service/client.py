"""A small Python client for the service, sync (`Client`) and async (`AsyncClient`), on httpx.

    with Client("http://127.0.0.1:8000") as client:
        job = client.submit(prompt="a red circle above a blue square", steps=20, seed=7)
        for event_id, event in client.events(job.id):   # resumes after a dropped connection
            print(event.type, event.percent)
        client.save_images(client.get(job.id), "seven.png")

Errors come back as `APIError` carrying the server's `code`, `message` and `details`.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx

from generative_service.schemas import Event, GenerationRequest, JobList, JobResource

DEFAULT_URL = "http://127.0.0.1:8000"


class APIError(Exception):
    """A non-2xx answer. `retry_after` is set for 429/503 answers that carry `Retry-After`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details, self.retry_after = (
            status,
            code,
            message,
            details,
            retry_after,
        )


def _check(response: httpx.Response) -> httpx.Response:
    if response.is_success:
        return response
    try:
        error = response.json()["error"]
        code, message, details = error["code"], error["message"], error.get("details")
    except (ValueError, KeyError, TypeError):
        code, message, details = "http_error", response.text[:200] or response.reason_phrase, None
    retry = response.headers.get("Retry-After")
    raise APIError(
        response.status_code,
        code,
        message,
        details,
        float(retry) if retry and retry.isdigit() else None,
    )


def _submit_args(
    request: GenerationRequest | dict | None,
    fields: dict,
    idempotency_key: str | None,
    wait: int | None,
) -> dict:
    body: dict = {}
    if isinstance(request, GenerationRequest):
        body = request.model_dump(mode="json", exclude_none=True)
    elif request is not None:
        body = dict(request)
    body.update(fields)
    headers = {}
    if idempotency_key:
        headers["Idempotency-Key"] = idempotency_key
    if wait:
        headers["Prefer"] = f"wait={int(wait)}"
    return {"json": body, "headers": headers}


# One server-sent event: (id, event name, data).
Frame = tuple[str | None, str | None, str]


class SSEParser:
    """Turns `text/event-stream` lines into (id, event, data) frames; comments become `None` frames."""

    def __init__(self) -> None:
        self.event_id: str | None = None
        self.event: str | None = None
        self.data: list[str] = []

    def feed(self, line: str) -> Frame | None | Literal[False]:
        """A frame when `line` ends one, None for a comment (keep-alive), False otherwise."""
        if line.startswith(":"):
            return None
        if line == "":
            if not self.data:
                return False
            frame = (self.event_id, self.event, "\n".join(self.data))
            self.event, self.data = None, []
            return frame
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            self.event_id = value
        elif name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return False


def _to_event(frame: Frame) -> tuple[str, Event]:
    return frame[0] or "", Event.model_validate_json(frame[2])


def _list_params(status: str | None, limit: int, cursor: str | None) -> dict:
    params = {"status": status, "limit": limit, "cursor": cursor}
    return {key: value for key, value in params.items() if value is not None}


def _stream_request(job_id: str, last_event_id: str | None) -> dict:
    """The arguments of the events request, resuming after `last_event_id`."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    return {"method": "GET", "url": f"/v1/jobs/{job_id}/events", "headers": headers}


def _reconnect_delay(job_id: str, failures: int, max_reconnects: int) -> float:
    """Seconds to back off before reconnecting the event stream; APIError once out of tries."""
    if failures > max_reconnects:
        raise APIError(
            503, "stream_lost", f"lost the event stream of job {job_id} {failures} times"
        )
    return min(5.0, 0.2 * 2**failures)


def image_paths(out: str | Path, count: int) -> list[Path]:
    """`out` for one image; `stem-0.ext`, `stem-1.ext`... for several."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{index}{out.suffix}") for index in range(count)]


class _Base:
    def __init__(
        self, base_url: str, api_key: str | None, timeout: float, stream_timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout = timeout
        self.stream_timeout = httpx.Timeout(timeout, read=stream_timeout)


class Client(_Base):
    """Blocking client. `stream_timeout`: longest silence on an SSE stream (keep-alives reset it)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 30.0,
                 stream_timeout: float = 60.0, transport: httpx.BaseTransport | None = None) -> None:  # fmt: skip
        super().__init__(base_url, api_key, timeout, stream_timeout)
        self.http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def submit(self, request: GenerationRequest | dict | None = None, /, *, idempotency_key: str | None = None,
               wait: int | None = None, **fields: Any) -> JobResource:  # fmt: skip
        """Submit a job (fields as in POST /v1/jobs). `wait`: seconds to wait for it to finish."""
        args = _submit_args(request, fields, idempotency_key, wait)
        timeout = self.timeout + (wait or 0)
        return JobResource.model_validate(
            _check(self.http.post("/v1/jobs", timeout=timeout, **args)).json()
        )

    def get(self, job_id: str) -> JobResource:
        return JobResource.model_validate(_check(self.http.get(f"/v1/jobs/{job_id}")).json())

    def list(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobList:
        params = _list_params(status, limit, cursor)
        return JobList.model_validate(_check(self.http.get("/v1/jobs", params=params)).json())

    def cancel(self, job_id: str) -> JobResource:
        return JobResource.model_validate(
            _check(self.http.post(f"/v1/jobs/{job_id}/cancel")).json()
        )

    def models(self) -> dict:
        return _check(self.http.get("/v1/models")).json()

    def ready(self) -> bool:
        try:
            return self.http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def image(self, job_id: str, index: int = 0) -> bytes:
        return _check(self.http.get(f"/v1/jobs/{job_id}/images/{index}")).content

    def save_images(self, job: JobResource, out: str | Path) -> builtins.list[Path]:
        """Download every (not blocked) image of `job` to `out` (numbered when there are several)."""
        saved = []
        for image, path in zip(job.images, image_paths(out, len(job.images)), strict=True):
            if image.url is None:
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(self.image(job.id, image.index))
            saved.append(path)
        return saved

    def events(
        self, job_id: str, *, last_event_id: str | None = None, max_reconnects: int = 10
    ) -> Iterator[tuple[str, Event]]:
        """The job's events as (event id, Event) until the terminal one, reconnecting with `Last-Event-ID`."""
        for item in self._frames(job_id, last_event_id, max_reconnects):
            if item is not None:
                yield item

    def wait(self, job_id: str, *, timeout: float | None = None) -> JobResource:
        """Block until the job ends (followed over SSE); TimeoutError after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for item in self._frames(job_id, None, 10):
            if item is not None and item[1].is_terminal:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} did not finish within {timeout} s")
        return self.get(job_id)

    def _frames(
        self, job_id: str, last_event_id: str | None, max_reconnects: int
    ) -> Iterator[tuple[str, Event] | None]:
        failures = 0
        while True:
            request = _stream_request(job_id, last_event_id)
            try:
                with self.http.stream(**request, timeout=self.stream_timeout) as response:
                    if not response.is_success:
                        response.read()
                        _check(response)
                    parser = SSEParser()
                    for line in response.iter_lines():
                        frame = parser.feed(line)
                        if frame is None:
                            yield None
                        elif frame:
                            last_event_id, event = _to_event(frame)
                            failures = 0
                            yield last_event_id, event
                            if event.is_terminal:
                                return
            except httpx.TransportError:
                pass
            failures += 1
            time.sleep(_reconnect_delay(job_id, failures, max_reconnects))


class AsyncClient(_Base):
    """The same API as `Client`, for asyncio."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None, timeout: float = 30.0,
                 stream_timeout: float = 60.0, transport: httpx.AsyncBaseTransport | None = None) -> None:  # fmt: skip
        super().__init__(base_url, api_key, timeout, stream_timeout)
        self.http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def submit(self, request: GenerationRequest | dict | None = None, /, *, idempotency_key: str | None = None,
                     wait: int | None = None, **fields: Any) -> JobResource:  # fmt: skip
        args = _submit_args(request, fields, idempotency_key, wait)
        response = await self.http.post("/v1/jobs", timeout=self.timeout + (wait or 0), **args)
        return JobResource.model_validate(_check(response).json())

    async def get(self, job_id: str) -> JobResource:
        return JobResource.model_validate(_check(await self.http.get(f"/v1/jobs/{job_id}")).json())

    async def list(
        self, *, status: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> JobList:
        params = _list_params(status, limit, cursor)
        return JobList.model_validate(_check(await self.http.get("/v1/jobs", params=params)).json())

    async def cancel(self, job_id: str) -> JobResource:
        return JobResource.model_validate(
            _check(await self.http.post(f"/v1/jobs/{job_id}/cancel")).json()
        )

    async def models(self) -> dict:
        return _check(await self.http.get("/v1/models")).json()

    async def image(self, job_id: str, index: int = 0) -> bytes:
        return _check(await self.http.get(f"/v1/jobs/{job_id}/images/{index}")).content

    async def events(
        self, job_id: str, *, last_event_id: str | None = None, max_reconnects: int = 10
    ) -> AsyncIterator[tuple[str, Event]]:
        """The job's events as (event id, Event) until the terminal one, reconnecting with `Last-Event-ID`."""
        failures = 0
        while True:
            request = _stream_request(job_id, last_event_id)
            try:
                async with self.http.stream(**request, timeout=self.stream_timeout) as response:
                    if not response.is_success:
                        await response.aread()
                        _check(response)
                    parser = SSEParser()
                    async for line in response.aiter_lines():
                        frame = parser.feed(line)
                        if frame:
                            last_event_id, event = _to_event(frame)
                            failures = 0
                            yield last_event_id, event
                            if event.is_terminal:
                                return
            except httpx.TransportError:
                pass
            failures += 1
            await asyncio.sleep(_reconnect_delay(job_id, failures, max_reconnects))

    async def wait(self, job_id: str, *, timeout: float | None = None) -> JobResource:
        """Wait until the job ends; TimeoutError after `timeout` seconds."""

        async def until_terminal() -> None:
            async for _, event in self.events(job_id):
                if event.is_terminal:
                    return

        await asyncio.wait_for(until_terminal(), timeout)
        return await self.get(job_id)
