"""Settling jobs of dead workers, in-process (no worker process needed): RQ's abandoned-job
cleanup brings our job record along, and the backstop scan settles running records whose
worker's liveness key is gone from what RQ did with the job."""

from __future__ import annotations

import json
import time

from redis import Redis
from rq import SimpleWorker
from rq.job import Job

from generative_service.jobs import JobStore
from generative_service.schemas import BatchInfo
from workers.recovery import Maintenance


def _maintenance(redis: Redis, settings) -> Maintenance:
    store = JobStore(redis, settings)
    return Maintenance(
        redis=redis,
        store=store,
        queue_names=[store.keys.rq_queue_name("default")],
        get_worker=lambda: None,
    )


def _run_on_ghost(redis: Redis, jobs, job_id: str) -> None:
    """Make `job_id` look like it runs on worker `ghost`, whose heartbeats stopped long ago."""
    worker = SimpleWorker([jobs.queue], connection=redis, name=f"{jobs.settings.key_prefix}:ghost")
    job = Job.fetch(job_id, connection=redis)
    redis.lrem(jobs.queue.key, 0, job_id)
    execution = worker.prepare_execution(job)
    worker.prepare_job_execution(job)
    redis.zadd(jobs.queue.started_job_registry.key, {execution.composite_key: 1})  # expired
    jobs.store.mark_started(job_id, batch=BatchInfo(id="batch_ghost", size=1), worker_id="ghost")
    redis.hset(
        jobs.settings.keys.running,
        job_id,
        json.dumps({"worker": "ghost", "incarnation": "ghost.1"}),
    )


def test_abandoned_job_is_requeued_with_its_record_then_fails_when_retries_are_used(
    redis, worker_settings, make_jobs
) -> None:
    settings = worker_settings(job_retries=1)
    jobs = make_jobs(settings)
    job_id = jobs.submit()
    maintenance = _maintenance(redis, settings)

    _run_on_ghost(redis, jobs, job_id)
    maintenance.tick()
    record = jobs.get(job_id)
    assert record.status == "queued" and record.error.code == "retrying"
    assert "worker ghost stopped answering" in record.error.message
    assert jobs.queue.get_job_ids() == [job_id] and not jobs.registries()["started"]
    assert jobs.event_types(job_id) == ["queued", "started", "queued"]

    _run_on_ghost(redis, jobs, job_id)  # the retry's worker dies too
    maintenance.tick()
    record = jobs.get(job_id)
    assert record.status == "failed" and record.error.code == "worker_lost"
    assert "its 1 retry was used up" in record.error.message
    assert jobs.registries()["failed"] == {job_id}
    assert not redis.hexists(settings.keys.running, job_id)


def test_backstop_settles_a_running_record_from_rq_state_once_its_worker_is_gone(
    redis, worker_settings, make_jobs
) -> None:
    settings = worker_settings(job_retries=1)
    jobs = make_jobs(settings)
    requeued, failed, alive = jobs.submit(seed=1), jobs.submit(seed=2), jobs.submit(seed=3)
    for job_id in (requeued, failed, alive):
        jobs.store.mark_started(job_id, batch=BatchInfo(id="batch_x", size=1), worker_id="ghost")
        redis.hset(
            settings.keys.running, job_id, json.dumps({"worker": "ghost", "incarnation": "ghost.1"})
        )
    # RQ already dealt with two of them without our handler (another tool ran its cleanup):
    # one went back to its queue, one failed. The third belongs to a live worker.
    Job.fetch(failed, connection=redis).set_status("failed")
    redis.hset(
        settings.keys.running, alive, json.dumps({"worker": "live", "incarnation": "live.1"})
    )
    redis.set(settings.keys.worker("live"), json.dumps({"incarnation": "live.1"}), ex=60)
    maintenance = _maintenance(redis, settings)

    maintenance.scan_running()  # first sighting: a worker gets two heartbeats of grace
    assert {jobs.get(job_id).status for job_id in (requeued, failed, alive)} == {"running"}
    maintenance.dead_since = {job_id: time.monotonic() - 60 for job_id in maintenance.dead_since}
    maintenance.scan_running()

    assert jobs.get(requeued).status == "queued" and "ghost" in jobs.get(requeued).error.message
    assert jobs.get(failed).status == "failed" and jobs.get(failed).error.code == "worker_lost"
    assert jobs.get(alive).status == "running"
    assert set(redis.hkeys(settings.keys.running)) == {alive.encode()}
