"""The queue bound holds under concurrent submits: past GENSVC_MAX_QUEUED every submit is a 429
(QueueFull with Retry-After), never an accepted job over the bound, and nothing accepted is lost."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from generative_service.errors import QueueFull
from generative_service.jobs import JobStore
from generative_service.schemas import GenerationRequest

BOUND = 10
SUBMITS = 48


def test_concurrent_submits_never_overshoot_the_bound(make_settings, redis):
    settings = make_settings(max_queued=BOUND)
    request = GenerationRequest(prompt="a yellow triangle", steps=2)

    def submit(_: int) -> str:
        store = JobStore(redis, settings)  # one store per thread, like gateway requests
        try:
            return store.create(request)[0].id
        except QueueFull as exc:
            assert exc.retry_after_s >= 1
            return "429"

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(submit, range(SUBMITS)))

    accepted = [result for result in results if result != "429"]
    store = JobStore(redis, settings)
    assert len(accepted) == BOUND, f"{len(accepted)} accepted with GENSVC_MAX_QUEUED={BOUND}"
    assert sorted(store.queue.rq_queue("default").get_job_ids()) == sorted(
        accepted
    )  # every accepted job waits
    assert all(store.get(job_id).status == "queued" for job_id in accepted)
    # Reservations are released: once one job leaves the queue, exactly one more gets in.
    store.cancel(accepted[0])
    assert store.create(request)[1] is True
    try:
        store.create(request)
        raise AssertionError("an 11th waiting job was accepted")
    except QueueFull:
        pass
