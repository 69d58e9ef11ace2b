"""End to end through the real gateway and a real GPU worker process on the tiny model:
submit -> SSE events -> stored image, with RQ's registries right afterwards."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image


def test_submit_follow_events_and_download_image(start_service, worker_settings, make_jobs) -> None:
    settings = worker_settings()
    service = start_service(settings, workers=1)
    jobs = make_jobs(settings)
    with service.client() as client:
        job = client.submit(
            prompt="a red house", steps=4, seed=7, preview={"every_n_steps": 2, "max_px": 32}
        )
        seen = list(client.events(job.id))
        done = client.get(job.id)
        png = client.image(job.id, 0)
        models = client.models()

    types = [event.type for _, event in seen]
    assert types[0] == "queued" and types[1] == "started"
    assert types[-1] == "succeeded" and types.count("succeeded") == 1
    progress = [event for _, event in seen if event.type == "progress"]
    assert [event.step for event in progress] == [1, 2, 3, 4]
    assert progress[-1].percent == 100.0
    # Previews every 2nd step, as small data URLs no longer than max_px.
    assert [event.step for event in progress if event.preview] == [2, 4]
    header, _, data = progress[1].preview.partition(",")
    assert header.startswith("data:image/")
    assert max(Image.open(io.BytesIO(base64.b64decode(data))).size) <= 32
    stages = [event.stage for _, event in seen if event.type == "stage"]
    assert stages == ["safety", "storing"]  # no upscale asked
    assert types.index("stage") > max(i for i, t in enumerate(types) if t == "progress")

    assert done.status == "succeeded" and done.error is None
    assert done.batch is not None and done.batch.size == 1 and done.batch.jobs == 1
    assert done.progress.stage == "done"
    image = done.images[0]
    assert (image.width, image.height, image.seed, image.content_type) == (64, 64, 7, "image/png")
    assert image.nsfw is not None and image.url.endswith(f"/v1/jobs/{job.id}/images/0")
    assert (
        done.timings.inference_ms > 0
        and done.timings.safety_ms is not None
        and done.timings.total_ms > 0
    )
    decoded = Image.open(io.BytesIO(png))
    assert decoded.format == "PNG" and decoded.size == (64, 64)
    assert (
        models["source"] == "worker" and models["base_model"] == "tiny"
    )  # published by the worker

    places = jobs.registries()
    assert job.id in places["finished"]
    assert not places["started"] and not places["queued"] and not places["failed"]


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_flagged_image_is_blurred_then_upscaled(start_service, worker_settings, make_jobs) -> None:
    # Threshold 0 flags every image: what a user gets for an NSFW verdict under the blur policy.
    settings = worker_settings(nsfw_threshold=0.0, safety_policy="blur")
    start_service(settings, workers=1, gateway=False)
    jobs = make_jobs(settings)
    job_id = jobs.submit(seed=3, upscale=2, output_format="webp")
    record = jobs.wait_terminal([job_id])[0]

    assert record.status == "succeeded", record.error
    stages = [event.stage for event in jobs.events(job_id) if event.type == "stage"]
    assert stages == ["safety", "upscaling", "storing"]
    image = record.images[0]
    assert image.nsfw.flagged and image.blurred and not image.blocked
    assert (image.width, image.height, image.content_type) == (128, 128, "image/webp")
    assert jobs.pixels(job_id).shape == (128, 128, 3)
    assert record.timings.upscale_ms is not None and record.timings.safety_ms is not None


def test_blocked_image_is_not_stored_and_has_no_url(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(nsfw_threshold=0.0, safety_policy="block")
    start_service(settings, workers=1, gateway=False)
    jobs = make_jobs(settings)
    job_id = jobs.submit(seed=3, num_images=2)
    record = jobs.wait_terminal([job_id])[0]

    assert record.status == "succeeded", record.error
    assert [(image.url, image.blocked, image.nsfw.flagged) for image in record.images] == [
        (None, True, True)
    ] * 2
    assert [image.seed for image in record.images] == [3, 4]
    assert not list(jobs.storage.root.glob(f"{job_id}/*"))
