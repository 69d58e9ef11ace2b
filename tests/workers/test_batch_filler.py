"""Filling a batch around the job RQ handed out, in-process (real Redis and RQ, no engine)."""

from __future__ import annotations

import threading
import time

from rq.job import Job

from generative_service.engine.compatibility import batch_key
from generative_service.errors import InvalidRequest
from generative_service.schemas import utcnow
from workers.batch_filler import BatchFiller


def _validate(request) -> None:
    if request.prompt == "invalid":
        raise InvalidRequest("prompt", "rejected by this test's engine")


def _batcher(jobs, *, stop: bool = False) -> BatchFiller:
    return BatchFiller(jobs.store, jobs.settings, validate=_validate, should_stop=lambda: stop)


def _hand_out(jobs):
    """What RQ's dequeue does: pop the head of the queue into its intermediate list."""
    job_id = jobs.redis.lmove(jobs.queue.key, jobs.queue.intermediate_queue_key).decode()
    record = jobs.get(job_id)
    return Job.fetch(job_id, connection=jobs.redis), record


def test_fills_with_compatible_waiting_jobs_up_to_the_image_limit(
    worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=0, max_batch_images=4)
    jobs = make_jobs(settings)
    first = jobs.submit(seed=1)
    other_steps = jobs.submit(seed=2, steps=9)
    canceled = jobs.submit(seed=3)
    invalid = jobs.submit("invalid", seed=4)
    two_images = jobs.submit(seed=5, num_images=2)
    too_many = jobs.submit(seed=6, num_images=2)  # 1 + 2 + 2 > 4
    last = jobs.submit(seed=7)
    jobs.store.mark_canceled(canceled)  # its record ended, but it is still in the queue

    job, record = _hand_out(jobs)
    batch = _batcher(jobs).fill(job, jobs.queue, record, batch_key(record.request))

    assert [rq_job.id for rq_job, _ in batch.jobs] == [first, two_images, last]
    assert batch.images == 4
    # Claimed mates sit in RQ's intermediate list until the worker starts them; the rest wait.
    intermediate = {
        value.decode() for value in jobs.redis.lrange(jobs.queue.intermediate_queue_key, 0, -1)
    }
    assert intermediate == {first, two_images, last}
    assert jobs.queue.get_job_ids() == [other_steps, canceled, invalid, too_many]


def test_a_stopping_worker_takes_no_mates(worker_settings, make_jobs) -> None:
    settings = worker_settings(batch_window_ms=0)
    jobs = make_jobs(settings)
    first, mate = jobs.submit(seed=1), jobs.submit(seed=2)

    job, record = _hand_out(jobs)
    batch = _batcher(jobs, stop=True).fill(job, jobs.queue, record, batch_key(record.request))

    assert [rq_job.id for rq_job, _ in batch.jobs] == [first]
    assert jobs.queue.get_job_ids() == [mate]


def _submit_later(jobs, count: int, *, every_s: float) -> threading.Thread:
    def run() -> None:
        for n in range(count):
            time.sleep(every_s)
            jobs.submit(seed=100 + n)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_after_a_batch_of_several_it_waits_for_their_clients_to_come_back(
    worker_settings, make_jobs
) -> None:
    """Looping clients (submit, wait, submit again) come back right after their batch delivered:
    the next batch waits for them instead of starting with the one job that waited meanwhile
    (two groups of clients alternated in half-size batches)."""
    settings = worker_settings(batch_window_ms=300, max_batch_images=4)
    jobs = make_jobs(settings)
    waited = jobs.submit(seed=1)
    time.sleep(0.35)  # older than the window: on its own it would not wait for anyone
    filler = _batcher(jobs)
    filler.delivered(utcnow(), utcnow(), 3)  # the last batch's three clients are coming back
    coming_back = _submit_later(jobs, 3, every_s=0.03)
    job, record = _hand_out(jobs)
    batch = filler.fill(job, jobs.queue, record, batch_key(record.request))
    coming_back.join()

    assert batch.jobs[0][0].id == waited
    assert len(batch.jobs) == 4, [r.id for _, r in batch.jobs]


def test_a_lone_looping_client_is_not_kept_waiting(worker_settings, make_jobs) -> None:
    """After a batch of one, the one job submitted since is that client's: it starts at once."""
    settings = worker_settings(batch_window_ms=300, max_batch_images=4)
    jobs = make_jobs(settings)
    filler = _batcher(jobs)
    filler.delivered(utcnow(), utcnow(), 1)
    back = jobs.submit(seed=1)
    later = _submit_later(jobs, 1, every_s=0.15)  # another client, well after
    job, record = _hand_out(jobs)
    batch = filler.fill(job, jobs.queue, record, batch_key(record.request))
    later.join()

    assert [rq_job.id for rq_job, _ in batch.jobs] == [back]
