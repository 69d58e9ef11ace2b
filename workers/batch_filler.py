"""Fill a batch around the job RQ handed out with compatible jobs waiting in the same logical queue.

RQ dequeues one job. The filler looks at the jobs waiting in every API key's RQ queue of the same
logical queue (fairshare.py) and claims those with the same `batch_key`, taking the keys in turn
(the first waiting job of each key, then the second, ...), until the batch holds
GENSVC_MAX_BATCH_IMAGES images: compatible jobs of different keys share batches, and one key's
backlog cannot fill every batch. It waits for more only while another compatible job may still
arrive: within GENSVC_BATCH_WINDOW_MS of the job's submission, and only when other jobs were
submitted less than a window apart from it (the submit script's burst counter) or jobs are
waiting; a lone job starts at once. Right after a batch of several jobs delivered, it also
waits (up to a window after its last result went out) for as many jobs submitted since its first
did: clients that loop (submit, wait for the result, submit again) come back together, and
without the wait two groups of them alternate in half-size batches for good. With
GENSVC_MAX_RUNNING_PER_KEY it claims no job of a key that already has that many running. A claim
moves the job id from the queue to the queue's RQ intermediate list in one atomic step (the same place RQ's own dequeue puts a job), so two
workers never claim the same job and RQ's intermediate-queue cleanup covers a worker that dies
right after claiming. The handed-out job is always in the batch (no starvation); a job that is
invalid, canceled or incompatible is left where it is and runs alone when RQ hands it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from generative_service.engine.compatibility import batch_key, images_in
from generative_service.errors import ServiceError
from generative_service.jobs import JobStore
from generative_service.record import JobRecord
from generative_service.redis_client import reply_text
from generative_service.schemas import GenerationRequest, JobStatus

if TYPE_CHECKING:
    from rq.job import Job
    from rq.queue import Queue

    from generative_service.settings import Settings
    from workers.fairshare import TenantQueues

# How many waiting jobs are inspected per look (the oldest ones; deeper ones wait their turn).
SCAN_DEPTH = 64
POLL_S = 0.01

# Move one job id from the queue to its intermediate list if it is still waiting.
_CLAIM = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 1 then
  redis.call('RPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""


@dataclass
class Candidate:
    """What the filler knows about one waiting job (cached across looks)."""

    record: JobRecord | None
    key: str | None = None
    images: int = 0
    error: ServiceError | None = None


@dataclass
class Batch:
    """Jobs that will share one pipeline call, oldest first."""

    queue: Queue
    key: str
    jobs: list[tuple[Job, JobRecord]] = field(default_factory=list)
    queues: dict[str, Queue] = field(default_factory=dict)  # job id -> the queue it came from

    def queue_of(self, job: Job) -> Queue:
        return self.queues.get(job.id, self.queue)

    @property
    def images(self) -> int:
        return sum(images_in(record.request) for _, record in self.jobs)


@dataclass(eq=False)  # identity semantics, as a plain class has
class BatchFiller:
    """Claims compatible waiting jobs for the job RQ handed out.

    Args:
        store: the job store (records and requests).
        settings: batch window and size.
        validate: `Engine.validate`; raises InvalidRequest for a request this worker cannot run.
        should_stop: returns True when the worker is shutting down (stop filling at once).
    """

    store: JobStore
    settings: Settings
    _: KW_ONLY
    validate: Callable[[GenerationRequest], None]
    should_stop: Callable[[], bool]
    tenants: TenantQueues | None = None

    def __post_init__(self) -> None:
        self._claim = self.store.redis.register_script(_CLAIM)
        self._delivered: tuple[datetime, datetime, int] | None = None

    def delivered(self, since: datetime, until: datetime, jobs: int) -> None:
        """The worker's last batch handed `jobs` results to their clients from `since` to `until`."""
        self._delivered = (since, until, jobs)

    def _returning(self, window_s: float) -> tuple[datetime, datetime, int] | None:
        """The last delivery, if it ended less than a window ago and went to several jobs."""
        from generative_service.schemas import utcnow

        if self._delivered is None or self._delivered[2] < 2:
            return None
        until = self._delivered[1]
        return self._delivered if utcnow() - until < timedelta(seconds=window_s) else None

    def check(self, record: JobRecord) -> Candidate:
        """Validate one job for this worker: its batch key and image count, or the error."""
        try:
            self.validate(record.request)
        except ServiceError as exc:
            return Candidate(record, error=exc)
        return Candidate(record, key=batch_key(record.request), images=images_in(record.request))

    def fill(self, job: Job, queue: Queue, record: JobRecord, key: str) -> Batch:
        """The batch for `job` (already validated, with batch key `key`), mates claimed."""
        batch = Batch(queue=queue, key=key, jobs=[(job, record)], queues={job.id: queue})
        capacity = self.settings.max_batch_images
        window_s = self.settings.batch_window_ms / 1000.0
        # The window counts from the submission of the handed-out job: a job that already waited
        # that long (a busy queue) batches with what is there and does not wait again.
        own_deadline = time.monotonic() + max(0.0, window_s - _age_s(record))
        returning = self._returning(window_s)
        if returning is not None:  # ... or from the last delivery, for the clients coming back
            return_deadline = time.monotonic() + max(0.0, window_s - _age_s_since(returning[1]))
        group = self.tenants.group_of(queue.name) if self.tenants else [queue]
        seen: dict[str, Candidate] = {}
        running: dict[str, int] = {}
        first = True
        while batch.images < capacity and not self.should_stop():
            # The first look also reads whether other submits are near (same round trip).
            burst_key = self.store.queue.burst_key(record.queue) if first else None
            waiting, burst = self._claim_waiting(batch, group, seen, capacity, running, burst_key)
            if batch.images >= capacity:
                break
            if returning is not None:
                since, _, jobs = returning
                if sum(1 for _, r in batch.jobs if r.created_at >= since) >= jobs:
                    returning = None  # as many came back as the last batch held
            deadline = own_deadline if returning is None else max(own_deadline, return_deadline)
            if time.monotonic() >= deadline:
                break
            if first and not waiting and returning is None and not burst:
                break  # nothing else waits, no other submit is near, nobody is coming back
            first = False
            time.sleep(min(POLL_S, max(0.0, deadline - time.monotonic())))
        return batch

    def _claim_waiting(
        self,
        batch: Batch,
        group: list[Queue],
        seen: dict[str, Candidate],
        capacity: int,
        running: dict[str, int],
        burst_key: str | None = None,
    ) -> tuple[int, bool]:
        """Claim compatible waiting jobs, keys in turn. Returns how many jobs were waiting, and
        (with `burst_key`, the queue's burst counter) whether other jobs of the queue were
        submitted less than a batch window apart."""
        pipe = self.store.redis.pipeline(transaction=False)
        for queue in group:
            pipe.lrange(queue.key, 0, SCAN_DEPTH - 1)
        if burst_key is not None:
            pipe.get(burst_key)
        replies = pipe.execute()
        listed = [[reply_text(value) for value in ids] for ids in replies[: len(group)]]
        near = replies[len(group)] if burst_key is not None else None
        burst = near is not None and int(near) > 1
        self._look_up([i for ids in listed for i in ids if i not in seen], seen)
        per_queue = [
            [
                (queue, candidate.record, candidate.images)
                for candidate in (seen[i] for i in ids)
                if candidate.key == batch.key and candidate.record is not None
            ]
            for queue, ids in zip(group, listed, strict=True)
        ]
        for lane in per_queue:
            lane.sort(key=lambda item: item[1].created_at)  # oldest first within a key
        # Round robin across keys: every key's first compatible job, then every key's second, ...
        turns = [item for rank in range(SCAN_DEPTH) for lane in per_queue if rank < len(lane) for item in [lane[rank]]]  # fmt: skip
        bound = self.settings.max_running_per_key
        if bound:
            self._running_counts(batch, [record.owner for _, record, _ in turns], running)
        for queue, record, images in turns:
            if batch.images + images > capacity:
                continue
            owner = record.owner
            if bound and running[owner] >= bound:
                continue
            job_id = record.id
            if not self._claim(keys=[queue.key, queue.intermediate_queue_key], args=[job_id]):
                continue  # another worker took it (or it was canceled) meanwhile
            rq_job = queue.fetch_job(job_id)
            if rq_job is None:
                self.store.redis.lrem(queue.intermediate_queue_key, 0, job_id)
                continue
            batch.jobs.append((rq_job, record))
            batch.queues[job_id] = queue
            running[owner] = running.get(owner, 0) + 1
            seen[job_id] = Candidate(None)  # taken: never look at it again
            if batch.images >= capacity:
                break
        return sum(len(ids) for ids in listed), burst

    def _running_counts(self, batch: Batch, owners: list[str], running: dict[str, int]) -> None:
        """Fill `running` (owner -> jobs running now, plus those already in this batch)."""
        missing = [owner for owner in dict.fromkeys(owners) if owner not in running]
        for _, record in batch.jobs:
            if record.owner not in running and record.owner not in missing:
                missing.append(record.owner)
        if not missing:
            return
        values = self.store.redis.hmget(
            self.store.queue.counts_key, [f"running:{owner}" for owner in missing]
        )
        for owner, value in zip(missing, values, strict=True):
            running[owner] = int(value or 0) + sum(1 for _, r in batch.jobs if r.owner == owner)

    def _look_up(self, ids: list[str], seen: dict[str, Candidate]) -> None:
        if not ids:
            return
        raws = self.store.redis.mget([self.store.keys.job(job_id) for job_id in ids])
        for job_id, raw in zip(ids, raws, strict=True):
            if raw is None:
                seen[job_id] = Candidate(None)
                continue
            record = JobRecord.model_validate_json(raw)
            if record.status != JobStatus.queued:
                seen[job_id] = Candidate(None)  # canceled (or odd): RQ hands it out alone
                continue
            seen[job_id] = self.check(record)


def _age_s(record: JobRecord) -> float:
    return _age_s_since(record.created_at)


def _age_s_since(moment: datetime) -> float:
    from generative_service.schemas import utcnow

    return max(0.0, (utcnow() - moment).total_seconds())
