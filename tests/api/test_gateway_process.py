"""The gateway as a real uvicorn process, used through the Python client: SSE over a real socket
(disconnect and resume), downloads, the async client. A FakeWorker thread plays the GPU worker."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest
from api_helpers import png_size

from generative_service.client import APIError, AsyncClient

OK = {"prompt": "a red circle above a blue square", "steps": 3}


@pytest.fixture
def gateway(start_service, settings):
    return start_service(settings, workers=0)


def run_when_queued(
    fake_worker, job_id: str, *, gate: threading.Event | None = None, steps: int = 3
) -> threading.Thread:
    def run() -> None:
        fake_worker.start(job_id)
        if gate is not None:
            gate.wait(30)
        fake_worker.progress(job_id, steps)
        fake_worker.succeed(job_id)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_client_submit_follow_and_download(gateway, fake_worker, tmp_path):
    with gateway.client() as client:
        job = client.submit(OK, seed=11, num_images=2)
        assert job.status.value == "queued" and job.request.seed == 11
        thread = run_when_queued(fake_worker, job.id)
        types = [event.type for _, event in client.events(job.id)]
        thread.join()
        assert types[0] == "queued" and types[-1] == "succeeded" and types.count("progress") == 3
        done = client.wait(job.id, timeout=10)
        paths = client.save_images(done, tmp_path / "seven.png")
        assert [path.name for path in paths] == ["seven-0.png", "seven-1.png"]
        assert png_size(paths[0].read_bytes()) == (64, 64)
        with pytest.raises(APIError) as caught:
            client.submit(prompt="x", width=65)
        assert (
            caught.value.status == 422
            and caught.value.message == "width: must be a multiple of 8, got 65"
        )


def test_sse_disconnect_does_not_cancel_and_resume_loses_nothing(gateway, fake_worker):
    with gateway.client() as client:
        job = client.submit(OK)
        gate = threading.Event()
        thread = run_when_queued(fake_worker, job.id, gate=gate)
        seen = []
        with httpx.stream(
            "GET", f"{gateway.base_url}/v1/jobs/{job.id}/events", timeout=10
        ) as response:
            for _, event in _frames(response):
                seen.append(event)
                if len(seen) == 2:
                    break  # the client goes away mid-job
        assert [event["type"] for event in seen] == ["queued", "started"]
        time.sleep(0.3)
        assert client.get(job.id).status.value == "running"  # disconnecting cancels nothing
        gate.set()
        resumed = list(client.events(job.id, last_event_id=seen[-1]["id"]))
        thread.join()
        everything = list(client.events(job.id))
        assert [event["id"] for event in seen] + [event_id for event_id, _ in resumed] == [
            event_id for event_id, _ in everything
        ]
        assert resumed[-1][1].type == "succeeded"


def _frames(response: httpx.Response):
    import json

    event_id = None
    for line in response.iter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data = json.loads(line[6:])
            yield event_id, {**data, "id": event_id}


def test_async_client(gateway, fake_worker):
    async def scenario() -> tuple[str, bytes, list[str]]:
        async with AsyncClient(gateway.base_url) as client:
            job = await client.submit(OK)
            thread = run_when_queued(fake_worker, job.id)
            types = [event.type async for _, event in client.events(job.id)]
            done = await client.wait(job.id, timeout=10)
            thread.join()
            return done.status.value, await client.image(job.id, 0), types

    status, image, types = asyncio.run(scenario())
    assert status == "succeeded" and png_size(image) == (64, 64)
    assert types[-1] == "succeeded"
