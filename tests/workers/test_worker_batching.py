"""Dynamic batching in a real worker process: who shares a pipeline call, and what it gives."""

from __future__ import annotations

import numpy as np
import pytest
from worker_helpers import wait_for

PROMPTS = ["a red house", "a blue car", "a red circle above a blue square", "a drawing of a tree"]


def test_four_concurrent_compatible_jobs_run_as_one_batch_with_solo_images(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=1500)
    start_service(settings, workers=1, gateway=False)
    jobs = make_jobs(settings)
    # Guidance may differ inside a batch as long as every job uses CFG.
    requests = [
        {"prompt": prompt, "seed": 100 + i, "guidance_scale": 5.0 + i}
        for i, prompt in enumerate(PROMPTS)
    ]

    solo = []
    for request in requests:  # one at a time: each runs alone
        job_id = jobs.submit(**request)
        jobs.wait_terminal([job_id])
        solo.append(job_id)
    # NOTE: the four queue behind a job of another size, so they all wait when the worker next
    # takes work: submitted one by one on an idle worker, the first could start before the fourth
    # arrived on a loaded machine (it split 1 + 3 under a 2-core training run).
    blocker = jobs.submit(seed=99, width=128, height=128, steps=30)
    wait_for(lambda: jobs.get(blocker).status != "queued", timeout=300, what="the blocker to start")
    together = [jobs.submit(**request) for request in requests]
    records = jobs.wait_terminal(together)
    assert jobs.get(blocker).batch.id not in {record.batch.id for record in records}

    assert all(record.status == "succeeded" for record in records)
    assert len({record.batch.id for record in records}) == 1
    assert {(record.batch.size, record.batch.jobs) for record in records} == {(4, 4)}
    for solo_id, record in zip(solo, records, strict=True):
        assert jobs.get(solo_id).batch.size == 1
        assert record.images[0].seed == jobs.get(solo_id).images[0].seed
        diff = np.abs(jobs.pixels(record.id) - jobs.pixels(solo_id)).max()
        assert diff <= 1, f"batched image differs from solo by {diff}/255"
    # Different prompts and seeds really give different images (the comparison can fail).
    assert np.abs(jobs.pixels(together[0]) - jobs.pixels(together[1])).max() > 1

    places = jobs.registries()
    assert places["finished"] == set(solo) | set(together) | {blocker}
    assert not places["started"] and not places["queued"] and not places["failed"]


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_incompatible_jobs_never_share_and_an_invalid_one_fails_alone(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=1500)
    jobs = make_jobs(settings)
    # Queued before the worker starts, so everything waits together.
    first = jobs.submit(seed=1)
    other_steps = jobs.submit(seed=2, steps=5)
    other_size = jobs.submit(seed=3, width=128, height=128)
    no_cfg = jobs.submit(seed=4, guidance_scale=1.0)
    too_many = jobs.submit(seed=5, num_images=4)  # 4 images cannot join a batch that has one
    bad_lora = jobs.submit(seed=6, loras=[{"name": "no-such-adapter"}])
    mate = jobs.submit(seed=7)
    start_service(settings, workers=1, gateway=False)

    records = {
        record.id: record
        for record in jobs.wait_terminal(
            [first, other_steps, other_size, no_cfg, too_many, bad_lora, mate]
        )
    }

    assert records[bad_lora].status == "failed"
    assert records[bad_lora].error.code == "invalid_lora"
    assert (
        "loras[0].name" in records[bad_lora].error.message
        and "no-such-adapter" in records[bad_lora].error.message
    )
    assert records[bad_lora].batch is None  # never ran in anyone's batch
    ran = [job_id for job_id in records if job_id != bad_lora]
    assert all(records[job_id].status == "succeeded" for job_id in ran)
    assert records[first].batch.id == records[mate].batch.id
    assert (records[first].batch.size, records[first].batch.jobs) == (2, 2)
    for job_id in (other_steps, other_size, no_cfg, too_many):
        assert records[job_id].batch.jobs == 1, f"{job_id} shared a batch"
    assert len({records[job_id].batch.id for job_id in ran}) == 5
    assert records[too_many].batch.size == 4 and len(records[too_many].images) == 4
    assert (records[other_size].images[0].width, records[other_size].images[0].height) == (128, 128)

    places = jobs.registries()
    assert places["failed"] == {bad_lora}
    assert places["finished"] == set(ran)
    assert not places["started"] and not places["queued"]


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_cancel_running_job_stops_it_and_its_batch_mate_finishes(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=1500)
    jobs = make_jobs(settings)
    # 128 px x 150 steps: seconds of work even on a quiet machine, so the cancel lands mid-run.
    canceled = jobs.submit(seed=1, steps=150, width=128, height=128)
    mate = jobs.submit(seed=2, steps=150, width=128, height=128)
    start_service(settings, workers=1, gateway=False)

    wait_for(lambda: jobs.get(canceled).progress.step >= 2, what="the batch to run a few steps")
    jobs.store.cancel(canceled)
    gone, finished = jobs.wait_terminal([canceled, mate])

    assert gone.status == "canceled" and gone.error.code == "canceled"
    assert gone.progress.step < 150  # it stopped early
    assert jobs.event_types(canceled)[-1] == "canceled" and "succeeded" not in jobs.event_types(
        canceled
    )
    assert not list(jobs.storage.root.glob(f"{canceled}/*"))  # nothing stored for it
    assert finished.status == "succeeded" and finished.batch.id == gone.batch.id
    assert jobs.pixels(mate).shape == (128, 128, 3)

    places = jobs.registries()
    assert places["canceled"] == {canceled}
    assert places["finished"] == {mate}
    assert not places["started"] and not places["failed"]
