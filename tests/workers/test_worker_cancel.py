"""Cancel takes effect in the post-processing stages too, not only between denoising steps."""

from __future__ import annotations

import pytest
from worker_helpers import wait_for


@pytest.mark.slow
def test_cancel_during_upscaling_stops_the_upscale_and_frees_the_worker(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings()
    start_service(settings, workers=1, gateway=False)
    jobs = make_jobs(settings)
    job_id = jobs.submit(seed=3, upscale=4)  # one 64 px tile: many seconds of RRDBNet on a CPU

    def stage_reached() -> bool:
        return any(e.type == "stage" and e.stage == "upscaling" for e in jobs.events(job_id))

    wait_for(stage_reached, timeout=120, what="the upscaling stage")
    jobs.store.cancel(job_id)
    record = jobs.wait_terminal([job_id])[0]

    assert record.status == "canceled" and not record.images
    stages = [event.stage for event in jobs.events(job_id) if event.type == "stage"]
    assert stages == ["safety", "upscaling"]  # never went on to store the image
    assert jobs.event_types(job_id)[-1] == "canceled"
    after = jobs.wait_terminal([jobs.submit(seed=4)])[0]
    assert after.status == "succeeded"


@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_a_cancel_stops_a_long_image_encode_between_blocks(fmt) -> None:
    """Storing: a 2048 px PNG took ~10 s to encode in one piece, so a cancel waited for it; the
    encoder now checks between the blocks PIL writes."""
    import numpy as np
    from PIL import Image

    from generative_service.engine.interrupt import Interrupted
    from generative_service.storage import encode_image

    noise = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    image = Image.fromarray(noise)
    calls: list[int] = []

    def cancel_at_the_third_block() -> None:
        calls.append(1)
        if len(calls) == 3:
            raise Interrupted()

    with pytest.raises(Interrupted):
        encode_image(image, fmt, check=cancel_at_the_third_block)
    assert len(calls) == 3  # it stopped there, mid-image

    whole, _ = encode_image(image, fmt)
    checked, content_type = encode_image(image, fmt, check=lambda: None)
    assert checked == whole and content_type == f"image/{fmt}"
