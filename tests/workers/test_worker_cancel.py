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
