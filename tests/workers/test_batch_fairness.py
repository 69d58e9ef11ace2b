"""Batch filling across API keys and the batch window, in-process (real Redis and RQ, no engine)."""

from __future__ import annotations

from rq.job import Job

from generative_service.engine.compatibility import batch_key
from generative_service.jobs import owner_for_key
from generative_service.schemas import GenerationRequest
from workers.batch_filler import BatchFiller
from workers.fairshare import TenantQueues, fair_queue_class

A, B = owner_for_key("key-a"), owner_for_key("key-b")


def _submit(jobs, owner: str, seed: int) -> str:
    request = GenerationRequest(prompt="a red house", steps=4, seed=seed)
    return jobs.store.create(request, owner=owner)[0].id


def _batcher(jobs, tenants=None) -> BatchFiller:
    return BatchFiller(
        jobs.store,
        jobs.settings,
        validate=lambda r: None,
        should_stop=lambda: False,
        tenants=tenants,
    )


def test_batches_take_keys_in_turn_and_mix_compatible_jobs_of_different_keys(
    worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=0, max_batch_images=2, api_keys=["key-a", "key-b"])
    jobs = make_jobs(settings)
    a_jobs = [_submit(jobs, A, seed) for seed in (1, 2, 3)]
    b_job = _submit(jobs, B, 4)
    tenants = TenantQueues(jobs.redis, jobs.store.queue, ["default"])
    queue_class = fair_queue_class([jobs.store.queue.bell_key("default")])

    job, queue = queue_class.dequeue_any(tenants.ordered(), None, connection=jobs.redis)
    tenants.served(queue)  # what the worker's round-robin reorder does after a dequeue
    record = jobs.get(job.id)
    batch = _batcher(jobs, tenants).fill(job, queue, record, batch_key(record.request))

    # One job of each key (whichever key's queue came first), not A's two oldest.
    assert {rq_job.id for rq_job, _ in batch.jobs} == {a_jobs[0], b_job}
    # A claimed job sits in its own key's RQ intermediate list, as after RQ's own dequeue.
    for rq_job, claimed in batch.jobs[1:]:
        own = batch.queue_of(rq_job)
        assert own.name.endswith("@" + claimed.owner)
        assert jobs.redis.lrange(own.intermediate_queue_key, 0, -1) == [rq_job.id.encode()]
    # Next dequeue: B's queue is empty, A's second job comes next.
    job, queue = queue_class.dequeue_any(tenants.ordered(), None, connection=jobs.redis)
    assert job.id == a_jobs[1] and Job.fetch(job.id, connection=jobs.redis).origin == queue.name


def test_a_lone_job_does_not_wait_for_the_window_but_a_burst_does(
    worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=60_000)
    jobs = make_jobs(settings)
    lone = jobs.get(jobs.submit(seed=1))
    batcher = _batcher(jobs)

    def near(record) -> bool:  # what the filler reads with its first look at the queue
        value = jobs.redis.get(batcher.store.queue.burst_key(record.queue))
        return value is not None and int(value) > 1

    assert not near(lone)
    job_id = jobs.redis.lmove(jobs.queue.key, jobs.queue.intermediate_queue_key).decode()
    # With a 60 s window this would hang the test if the lone job waited for batch-mates.
    batch = batcher.fill(
        Job.fetch(job_id, connection=jobs.redis), jobs.queue, lone, batch_key(lone.request)
    )
    assert [rq_job.id for rq_job, _ in batch.jobs] == [lone.id]
    second = jobs.get(jobs.submit(seed=2))  # within the window of the first: a burst
    assert near(second)
