"""Job records in Redis and the named state changes that also emit the job's events.

Redis layout (prefix P = settings.key_prefix):
  P:job:{id}                JSON JobRecord (the job resource plus owner and worker)
  P:cancel:{id}             set when a client cancels a running job; the worker polls it each step
  P:events:{id}             the job's event stream (events.py)
  P:owner:{owner}           sorted set of the owner's job ids by creation time (listing)
  P:idem:{owner}:{key}      Idempotency-Key -> {job_id, hash}                        (queue.py)
  P:counts                  waiting jobs in all and per owner, running per owner  (queue.py)
  P:order:{queue}           waiting job ids by submission sequence (positions)     (queue.py)
  P:stats:step_ms           hash: pixel class -> EWMA ms per denoising step (ETAs)  (queue.py)
  P:epoch                   when this Redis's data begins (a restart without persistence starts anew)
  rq:queue:P:{queue}        the RQ queue the job waits in (RQ job id == our job id)  (queue.py)

Gateway and worker both change records; every change is a compare-and-set: a script writes the
new record, its event and the change's bookkeeping only if the record is still the one the change
was made from, else hands back the record as it is now for the change to be made again. Neither
writer overwrites the other, a reader never sees a record ahead of its event, and a process that
wrote the record last (a worker driving its job) changes it in one round trip, without reading it
first. A terminal record never changes again. Admission (the queue bound,
idempotency, enqueueing, positions and ETAs) lives in queue.py.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from rq.job import Job as RQJob

from generative_service import events, logs, metrics, webhooks
from generative_service.errors import Conflict, InvalidRequest, NotFound
from generative_service.keys import Ttl
from generative_service.queue import (
    POSITION_PLACEHOLDER,
    JobQueue,
    Submission,
    body_hash,
    resolve,
)
from generative_service.record import ANONYMOUS, JobRecord
from generative_service.redis_client import reply_text
from generative_service.schemas import (
    BatchInfo,
    Event,
    GenerationRequest,
    ImageInfo,
    JobError,
    JobResource,
    JobStatus,
    Links,
    Progress,
    Stage,
    Timings,
    percent,
    utcnow,
)
from generative_service.settings import Settings

__all__ = ["JobStore", "owner_for_key"]

log = logs.get_logger(__name__)


def new_job_id() -> str:
    # 8 hex digits of creation time, then 64 random bits: a 404 can then tell a job Redis lost
    # (created before Redis's data begins, see JobStore.epoch) from one that never existed.
    return f"job_{int(time.time()):08x}{secrets.token_hex(8)}"


def owner_for_key(api_key: str | None) -> str:
    """A stable, non-reversible owner id for an API key (never store the key itself)."""
    if not api_key:
        return ANONYMOUS
    return "key_" + hashlib.sha256(api_key.encode()).hexdigest()[:16]


KNOWN_CACHE_MAX = 1_000  # records of jobs this process drives; a worker runs a batch at a time
# A record change, applied only if the record is what the change was made from. KEYS[1]: the
# record. ARGV[1]: the record as read; then per command its word count and its words (the
# record's SET, its event, the bookkeeping; as a transaction would have queued them). Returns
# {1} when applied, else {0, the record now} (nil when it is gone) and writes nothing.
_CHANGE_SCRIPT = """
local now = redis.call('GET', KEYS[1])
if now ~= ARGV[1] then
  return {0, now}
end
local i = 2
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return {1}
"""
# The progress of a batch's steps since the last write, in one round trip. KEYS: per job its
# record and its event stream. ARGV: the events' TTL, the stream's MAXLEN, then per job: the
# record as this process last wrote it, the new record, how many events follow, each event's
# data. A record that is no longer the one expected is left alone and returned ({position,
# record or false} pairs), for the caller to update from it.
_PROGRESS_SCRIPT = """
local stale = {}
local j = 3
for i = 1, #KEYS, 2 do
  local count = tonumber(ARGV[j + 2])
  local now = redis.call('GET', KEYS[i])
  if now == ARGV[j] then
    redis.call('SET', KEYS[i], ARGV[j + 1], 'KEEPTTL')
    for e = 1, count do
      redis.call('XADD', KEYS[i + 1], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[j + 2 + e])
    end
    redis.call('EXPIRE', KEYS[i + 1], ARGV[1])
  else
    table.insert(stale, (i + 1) / 2)
    table.insert(stale, now)
  end
  j = j + 3 + count
end
return stale
"""


class JobStore:
    """Creates, reads and changes job records; every change emits the matching event."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = settings.key_prefix
        self.keys = settings.keys
        self.queue = JobQueue(redis, settings)
        # The record JSON this process last wrote (or read to drive) of each job it drives: a
        # change is made from it and sent in one round trip, checked there against what Redis holds.
        self._known: dict[str, str] = {}
        self._progress = redis.register_script(_PROGRESS_SCRIPT)
        self._change = redis.register_script(_CHANGE_SCRIPT)

    # --- submit ---------------------------------------------------------------------------------
    def prepare(
        self,
        request: GenerationRequest,
        *,
        owner: str = ANONYMOUS,
        idempotency_key: str | None = None,
        raw_body: dict | None = None,
    ) -> Submission:
        """The new job's record and what the submit script writes for it (no Redis I/O)."""
        resolved = resolve(request, self.settings)
        record = JobRecord(
            id=new_job_id(),
            owner=owner,
            created_at=utcnow(),
            queue=self.settings.queue_for(
                pixels=math.prod(resolved.resolved_size),
                loras=[lora.name for lora in resolved.loras],
            ),
            request=resolved,
            progress=Progress(stage=Stage.queued, total_steps=resolved.steps),
        )
        digest = body_hash(raw_body if raw_body is not None else request.model_dump(mode="json"))
        idem_key = self.queue.idempotency_key(owner, idempotency_key)
        event = Event(type="queued", job_id=record.id, position=0).to_payload()
        event["position"] = POSITION_PLACEHOLDER
        queue, rq_queue = self.queue, self.queue.rq_queue_of(record)
        keys = [
            idem_key or "", queue.counts_key, self.keys.job(record.id), self.keys.owner(owner),
            self.keys.epoch, reply_text(RQJob.key_for(record.id)), rq_queue.key, rq_queue.redis_queues_keys,
            queue.order_key(record.queue), queue.sequence_key(record.queue), self.keys.events(record.id),
            metrics.submitted_counter_key(self.settings), queue.step_ms_key, queue.tenants_key(record.queue),
            queue.burst_key(record.queue), queue.bell_key(record.queue),
        ]  # fmt: skip
        args = [
            record.id, owner, record.model_dump_json(), record.created_at.timestamp(), repr(time.time()),
            self.settings.max_queued, self.settings.max_queued_per_key, queue.idempotency_value(record.id, digest),
            Ttl.retention(self.settings), json.dumps(event), events.STREAM_MAXLEN, Ttl.events(self.settings),
            record.queue, self.settings.batch_window_ms, *queue.rq_job_fields(record),
        ]  # fmt: skip
        return Submission(record=record, keys=keys, args=args, digest=digest)

    def create(
        self,
        request: GenerationRequest,
        *,
        owner: str = ANONYMOUS,
        idempotency_key: str | None = None,
        raw_body: dict | None = None,
    ) -> tuple[JobRecord, bool]:
        """Accept a job: store it, enqueue it, emit `queued`. Returns (record, created).

        Raises:
            Conflict: the idempotency key was used with another body.
            QueueFull: MAX_QUEUED jobs wait, or MAX_QUEUED_PER_KEY of this owner.
        """
        submission = self.prepare(
            request, owner=owner, idempotency_key=idempotency_key, raw_body=raw_body
        )
        for _ in range(2):
            replayed = self._accepted(submission, self.queue.submit(submission))
            if replayed is None:
                if submission.record.request.webhook:
                    self._emit_webhook(submission)
                return submission.record, True
            try:
                return self.get(replayed), False
            except NotFound:  # the replayed job expired: its key may be used afresh
                self.redis.delete(submission.keys[0])
        raise Conflict("Idempotency-Key is being reused concurrently; retry")

    async def create_async(
        self,
        redis: AsyncRedis,
        request: GenerationRequest,
        *,
        owner: str = ANONYMOUS,
        idempotency_key: str | None = None,
        raw_body: dict | None = None,
    ) -> tuple[JobResource, JobRecord, bool]:
        """`create` on the gateway's async client: (resource, record, created), one round trip."""
        submission = self.prepare(
            request, owner=owner, idempotency_key=idempotency_key, raw_body=raw_body
        )
        for _ in range(2):
            reply = await self.queue.submit_async(redis, submission)
            replayed = self._accepted(submission, reply)
            if replayed is None:
                if submission.record.request.webhook:
                    await asyncio.to_thread(self._emit_webhook, submission)
                steps = _pairs(reply[3])
                resource = self.resource_from(
                    submission.record, int(reply[1]), steps, base_url=self.settings.public_url
                )
                return resource, submission.record, True
            try:
                record = await self.get_async(redis, replayed)
            except NotFound:
                await redis.delete(submission.keys[0])
                continue
            return await self.resource_async(redis, record), record, False
        raise Conflict("Idempotency-Key is being reused concurrently; retry")

    def _accepted(self, submission: Submission, reply: list) -> str | None:
        """None when the script accepted the job; the replayed job id for an idempotent replay.

        Raises:
            QueueFull: a bound refused the job. Conflict: the key was used with another body.
        """
        kind = reply_text(reply[0])
        if kind == "replay":
            return self.queue.replayed_id(reply[1], submission.digest)
        if kind in ("full", "key_full"):
            raise self.queue.queue_full(reply, owner_bound=kind == "key_full")
        record, request = submission.record, submission.record.request
        metrics.job_submitted_here(record.queue)
        log.info(
            "job.submitted",
            extra={"job_id": record.id, "queue": record.queue, "owner": record.owner, "width": request.width,
                   "height": request.height, "steps": request.steps, "images": request.num_images,
                   "prompt": logs.prompt_field(self.settings, request.prompt)},
        )  # fmt: skip
        return None

    def _emit_webhook(self, submission: Submission) -> None:
        record = submission.record
        position = self.queue.position(record)
        webhooks.on_event(
            self.redis,
            self.settings,
            record,
            Event(type="queued", job_id=record.id, position=position),
        )

    # --- read -----------------------------------------------------------------------------------
    def get(self, job_id: str, *, owner: str | None = None, drive: bool = False) -> JobRecord:
        """The job, or NotFound. With `owner`, another owner's job is NotFound too (no leak).

        `drive`: this process is about to change the job (a worker that dequeued it): what was
        read is kept, so the first change is sent without reading the record again."""
        raw = self.redis.get(self.keys.job(job_id)) if _plausible_id(job_id) else None
        if raw is None:
            raise NotFound(f"job {job_id!r} not found" + self._lost_note(job_id))
        record = JobRecord.model_validate_json(raw)
        if owner is not None and record.owner != owner:
            raise NotFound(f"job {job_id!r} not found")  # never the note: it exists, just not yours
        if drive and not record.status.is_terminal:
            self._remember(job_id, reply_text(raw))
        return record

    async def get_async(
        self, redis: AsyncRedis, job_id: str, *, owner: str | None = None
    ) -> JobRecord:
        """`get` on the gateway's async client."""
        raw = await redis.get(self.keys.job(job_id)) if _plausible_id(job_id) else None
        if raw is None:
            pipe = redis.pipeline(transaction=False)
            pipe.set(self.keys.epoch, repr(time.time()), nx=True)
            pipe.get(self.keys.epoch)
            epoch = float((await pipe.execute())[1])
            raise NotFound(f"job {job_id!r} not found" + self._lost_note(job_id, epoch))
        record = JobRecord.model_validate_json(raw)
        if owner is not None and record.owner != owner:
            raise NotFound(f"job {job_id!r} not found")
        return record

    async def read_async(
        self, redis: AsyncRedis, job_id: str, *, owner: str | None = None
    ) -> JobResource:
        """The public resource of one job in one round trip (record, step times, queue ranks)."""
        if not _plausible_id(job_id):
            return await self.resource_async(
                redis, await self.get_async(redis, job_id, owner=owner)
            )
        queues = self.queue.known_queues()
        pipe = redis.pipeline(transaction=False)
        pipe.get(self.keys.job(job_id))
        pipe.hgetall(self.queue.step_ms_key)
        for queue in queues:
            pipe.zrank(self.queue.order_key(queue), job_id)
        raw, steps, *ranks = await pipe.execute()
        if raw is None:
            await self.get_async(redis, job_id)  # raises NotFound, with the note
        record = JobRecord.model_validate_json(raw)
        if owner is not None and record.owner != owner:
            raise NotFound(f"job {job_id!r} not found")
        if record.queue not in queues:  # a queue no longer routed to: ask for its rank alone
            return await self.resource_async(redis, record)
        rank = ranks[queues.index(record.queue)]
        position = (1 if rank is None else rank + 1) if record.status == JobStatus.queued else None
        return self.resource_from(
            record, position, _decode_map(steps), base_url=self.settings.public_url
        )

    async def resource_async(self, redis: AsyncRedis, record: JobRecord) -> JobResource:
        pipe = redis.pipeline(transaction=False)
        pipe.hgetall(self.queue.step_ms_key)
        pipe.zrank(self.queue.order_key(record.queue), record.id)
        steps, rank = await pipe.execute()
        position = (1 if rank is None else rank + 1) if record.status == JobStatus.queued else None
        return self.resource_from(
            record, position, _decode_map(steps), base_url=self.settings.public_url
        )

    def epoch(self) -> float:
        """When this Redis's data begins (set once, on first use; never expires). A Redis that
        restarted without persistence starts a new epoch: every job created before it is gone."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.epoch, repr(time.time()), nx=True)
        pipe.get(self.keys.epoch)
        return float(pipe.execute()[1])

    def _lost_note(self, job_id: str, epoch: float | None = None) -> str:
        """For a missing job whose id says it was created within retention but before the epoch."""
        try:
            created = int(job_id[4:12], 16)
        except ValueError:
            return ""
        epoch = self.epoch() if epoch is None else epoch
        if not epoch - self.settings.retention_s <= created < int(epoch):
            return ""
        since = datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")
        made = datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")
        return (f"; Redis holds no data from before {since} (it restarted without persistence), so this job, "
                f"created at {made}, was lost with its queue entry: submit it again")  # fmt: skip

    def list(
        self,
        *,
        owner: str,
        status: JobStatus | None = None,
        cursor: str | None = None,
        limit: int = 20,
    ) -> tuple[list[JobRecord], str | None]:
        """The owner's jobs, newest first. `cursor` is the opaque value a previous page returned."""
        max_score: str = "+inf"
        if cursor:
            try:
                score = float(cursor)
            except ValueError:
                score = math.nan
            if not math.isfinite(score):  # NOTE: Redis rejects "(nan" (a 500 before this check)
                raise InvalidRequest("cursor", "not a cursor this API returned")
            max_score = f"({score!r}"
        out: list[JobRecord] = []
        next_cursor = None
        while len(out) < limit:
            # withscores=True: [(member, score), ...] (redis-py types the reply as a wider union)
            ids = cast(
                "list[tuple[bytes | str, float]]",
                self.redis.zrevrangebyscore(
                    self.keys.owner(owner),
                    max_score,
                    "-inf",
                    start=0,
                    num=limit * 2,
                    withscores=True,
                ),
            )
            if not ids:
                break
            for job_id, score in ids:
                max_score = f"({score!r}"
                try:
                    record = self.get(reply_text(job_id))
                except NotFound:
                    self.redis.zrem(self.keys.owner(owner), job_id)  # expired
                    continue
                if status is None or record.status == status:
                    out.append(record)
                    if len(out) == limit:
                        next_cursor = repr(score)
                        break
        return out, next_cursor

    def to_resource(self, record: JobRecord, *, base_url: str = "") -> JobResource:
        """The public job resource, with queue position, ETA and links filled in."""
        return self.resource_from(
            record, self.queue.position(record), self.queue.step_times(), base_url=base_url
        )

    def resource_from(
        self,
        record: JobRecord,
        position: int | None,
        step_times: dict[str, float],
        *,
        base_url: str = "",
    ) -> JobResource:
        """The public job resource from what was read (no Redis I/O)."""
        data = record.model_dump(exclude={"owner", "worker_id"})
        data["queue_position"] = position if record.status == JobStatus.queued else None
        data["progress"] = self.queue.with_eta(record, data["queue_position"], step_times)
        root = f"{base_url}/v1/jobs/{record.id}"
        data["links"] = Links(
            self=root, events=f"{root}/events", cancel=f"{root}/cancel", webhooks=f"{root}/webhooks"
        )
        for image in data["images"]:
            if image["url"] and image["url"].startswith("/"):
                image["url"] = base_url + image["url"]
        return JobResource.model_validate(data)

    # --- state changes --------------------------------------------------------------------------
    def update(
        self,
        job_id: str,
        change: Callable[[JobRecord], bool | None],
        *,
        make_event: Callable[[JobRecord], Event] | None = None,
        also: Callable[[Pipeline, JobRecord], object] | None = None,
    ) -> JobRecord:
        """Atomically apply `change` to the stored record. `change` returns False to skip writing.

        `make_event(record)` gives the event of the changed record, appended to the job's stream
        with it (no moment where a client reads the new record before its event exists);
        `also(pipe, record)` queues more writes to go with it. One round trip when this process
        knows the record (it wrote it last), two when it reads it first; a record someone else
        changed meanwhile comes back with the reply and the change is made again from it."""
        key = self.keys.job(job_id)
        raw = self._known.get(job_id)
        fresh = raw is None
        if raw is None:
            raw = self._read(key, job_id)
        while True:
            record = JobRecord.model_validate_json(raw)
            old = record.status
            if change(record) is False:
                if fresh:
                    return record
                # Skipping is decided on what Redis holds, not on this process's copy of it.
                raw, fresh = self._read(key, job_id), True
                continue
            entering_queue = record.status == JobStatus.queued != old
            front = self.queue.front_score(record.queue) if entering_queue else 0.0
            written = record.model_dump_json()
            with self.redis.pipeline(transaction=False) as pipe:  # records the writes; never sent
                pipe.set(key, written, keepttl=True)
                self.queue.status_change(pipe, record, old, front)
                if record.status.is_terminal:
                    pipe.expire(key, Ttl.retention(self.settings))
                if make_event is not None:
                    events.append(
                        pipe, self.prefix, make_event(record), ttl_s=Ttl.events(self.settings)
                    )
                if also is not None:
                    also(pipe, record)
                words: builtins.list = [raw]
                for args, _options in pipe.command_stack:
                    words += [len(args), *args]
            applied, *now = self._change(keys=[key], args=words)
            if applied:
                self._remember(job_id, None if record.status.is_terminal else written)
                return record
            if now[0] is None:
                self._remember(job_id, None)
                raise NotFound(f"job {job_id!r} not found")
            raw, fresh = reply_text(now[0]), True

    def _read(self, key: str, job_id: str) -> str:
        raw = self.redis.get(key)
        if raw is None:
            self._remember(job_id, None)
            raise NotFound(f"job {job_id!r} not found")
        return reply_text(raw)

    def _remember(self, job_id: str, raw: str | None) -> None:
        if raw is None:
            self._known.pop(job_id, None)
            return
        if len(self._known) >= KNOWN_CACHE_MAX:  # jobs this process no longer drives
            self._known.clear()
        self._known[job_id] = raw

    def _emit(self, record: JobRecord, event: Event) -> str:
        event_id = events.publish(self.redis, self.prefix, event, ttl_s=Ttl.events(self.settings))
        self._notify_webhook(record, event)
        return event_id

    def _notify_webhook(self, record: JobRecord, event: Event) -> None:
        """Queue the webhook delivery of an event already in the job's stream, if it has one."""
        if record.request.webhook:
            webhooks.on_event(self.redis, self.settings, record, event)

    def _transition(
        self,
        job_id: str,
        change: Callable[[JobRecord], bool | None],
        make_event: Callable[[JobRecord], Event],
        *,
        also: Callable[[Pipeline, JobRecord], object] | None = None,
        event_after_commit: bool = False,
    ) -> JobRecord | None:
        """Apply `change` unless the job already ended; emit the event. None if it had ended.

        The event goes into the record's transaction (`update`), unless `event_after_commit`:
        for an event that reads what the transaction wrote (a requeued job's position)."""
        changed = False
        made: list[Event] = []

        def guarded(record: JobRecord) -> bool | None:
            nonlocal changed
            # Decided on each try: a try made from a copy Redis refused may have said yes.
            changed = not record.status.is_terminal and change(record) is not False
            return changed

        def event_of(record: JobRecord) -> Event:
            made[:] = [make_event(record)]  # the last try's (a changed record retries the change)
            return made[0]

        record = self.update(
            job_id, guarded, make_event=None if event_after_commit else event_of, also=also
        )
        if not changed:
            return None
        if event_after_commit:
            self._emit(record, make_event(record))
        else:
            self._notify_webhook(record, made[0])
        return record

    def mark_started(
        self,
        job_id: str,
        *,
        batch: BatchInfo,
        worker_id: str,
        also: Callable[[Pipeline, JobRecord], object] | None = None,
    ) -> JobRecord | None:
        """The job is running on `worker_id`; `also` queues the worker's own bookkeeping (its
        running entry) into the same transaction."""

        def change(record: JobRecord) -> None:
            record.status = JobStatus.running
            record.started_at = record.started_at or utcnow()
            record.attempts += 1
            record.error = None  # a retried job no longer carries the "retrying" note
            record.batch = batch
            record.worker_id = worker_id
            record.progress = Progress(stage=Stage.loading, total_steps=record.request.steps)
            record.timings.queued_ms = round(
                (utcnow() - record.created_at).total_seconds() * 1000, 1
            )

        return self._transition(
            job_id, change, lambda r: Event(type="started", job_id=job_id), also=also
        )

    def report_progress(
        self, job_id: str, step: int, total: int, *, preview: str | None = None
    ) -> JobRecord | None:
        def change(record: JobRecord) -> None:
            record.progress = Progress(
                stage=Stage.denoising, step=step, total_steps=total, percent=percent(step, total)
            )

        return self._transition(
            job_id,
            change,
            lambda r: Event(
                type="progress",
                job_id=job_id,
                step=step,
                total_steps=total,
                percent=percent(step, total),
                preview=preview,
            ),
        )

    def report_progress_many(
        self, updates: builtins.list[tuple[str, int, int, str | None]]
    ) -> None:
        """`report_progress` for several jobs (job id, step, total, preview), several steps of
        one job included, in one round trip: a script writes each record (at its last step) and
        every step's event if the record is still the one this process last wrote; a record
        changed by someone else comes back and is updated from what it is now (a job that ended
        meanwhile is left alone)."""
        steps: dict[str, builtins.list[Event]] = {}  # every step's event, per job, in order
        last: dict[str, tuple[int, int]] = {}  # the step (and total) its record will show
        for job_id, step, total, preview in updates:
            last[job_id] = (step, total)
            steps.setdefault(job_id, []).append(
                Event(
                    type="progress",
                    job_id=job_id,
                    step=step,
                    total_steps=total,
                    percent=percent(step, total),
                    preview=preview,
                )
            )
        current = {job_id: self._known.get(job_id) for job_id in steps}
        unknown = [job_id for job_id, raw in current.items() if raw is None]
        if unknown:  # the first step of a job this process did not start
            for job_id, raw in zip(unknown, self.redis.mget([self.keys.job(j) for j in unknown]), strict=True):  # fmt: skip
                current[job_id] = None if raw is None else reply_text(raw)
        ttl_s = Ttl.events(self.settings)
        pending = list(steps)
        while pending:
            keys: builtins.list[str] = []
            args: builtins.list[str | int] = [ttl_s, events.STREAM_MAXLEN]
            changed: builtins.list[tuple[JobRecord, builtins.list[Event], str]] = []
            for job_id in pending:
                raw = current[job_id]
                if raw is None or (record := JobRecord.model_validate_json(raw)).status.is_terminal:
                    self._remember(job_id, None)
                    continue
                step_events = steps[job_id]
                step, total = last[job_id]
                record.progress = Progress(
                    stage=Stage.denoising,
                    step=step,
                    total_steps=total,
                    percent=percent(step, total),
                )
                written = record.model_dump_json()
                keys += [self.keys.job(job_id), self.keys.events(job_id)]
                args += [raw, written, len(step_events), *map(events.encode, step_events)]
                changed.append((record, step_events, written))
            if not changed:
                return
            reply = self._progress(keys=keys, args=args)
            stale = {int(reply[k]) - 1: reply[k + 1] for k in range(0, len(reply), 2)}
            for index, (record, step_events, written) in enumerate(changed):
                if index in stale:
                    raw = stale[index]
                    current[record.id] = None if raw is None else reply_text(raw)
                    continue
                self._remember(record.id, written)
                if record.request.webhook:
                    for event in step_events:
                        webhooks.on_event(self.redis, self.settings, record, event)
            pending = [changed[index][0].id for index in stale]

    def set_stage(self, job_id: str, stage: Stage) -> JobRecord | None:
        def change(record: JobRecord) -> bool | None:
            if record.progress.stage == stage:
                return False
            record.progress = record.progress.model_copy(update={"stage": stage})
            return None

        return self._transition(
            job_id, change, lambda r: Event(type="stage", job_id=job_id, stage=stage)
        )

    def mark_succeeded(
        self,
        job_id: str,
        *,
        images: builtins.list[ImageInfo],
        timings: Timings,
        reproducibility: dict | None = None,
    ) -> JobRecord | None:
        def change(record: JobRecord) -> None:
            record.status = JobStatus.succeeded
            record.finished_at = utcnow()
            record.images = images
            record.timings = timings.model_copy(
                update={"queued_ms": record.timings.queued_ms, "total_ms": _total_ms(record)}
            )
            record.reproducibility = reproducibility
            record.progress = Progress(
                stage=Stage.done,
                step=record.request.steps,
                total_steps=record.request.steps,
                percent=100.0,
            )

        return self._finish(job_id, change, "succeeded")

    def mark_failed(self, job_id: str, *, code: str, message: str) -> JobRecord | None:
        def change(record: JobRecord) -> None:
            record.status = JobStatus.failed
            record.finished_at = utcnow()
            record.error = JobError(code=code, message=message)
            record.timings.total_ms = _total_ms(record)

        return self._finish(job_id, change, "failed")

    def mark_canceled(
        self, job_id: str, *, message: str = "canceled by the client"
    ) -> JobRecord | None:
        def change(record: JobRecord) -> None:
            record.status = JobStatus.canceled
            record.finished_at = utcnow()
            record.error = JobError(code="canceled", message=message)
            record.timings.total_ms = _total_ms(record)

        return self._finish(job_id, change, "canceled")

    def mark_requeued(self, job_id: str, *, reason: str) -> JobRecord | None:
        """A job whose worker died goes back to `queued` for a retry; emits `queued` again."""

        def change(record: JobRecord) -> None:
            record.status = JobStatus.queued
            record.progress = Progress(stage=Stage.queued, total_steps=record.request.steps)
            record.batch = None
            record.worker_id = None
            record.error = JobError(code="retrying", message=reason)

        return self._transition(
            job_id,
            change,
            lambda r: Event(type="queued", job_id=job_id, position=self.queue.position(r)),
            event_after_commit=True,
        )

    def _finish(
        self, job_id: str, change: Callable[[JobRecord], None], kind: str
    ) -> JobRecord | None:
        def make_event(record: JobRecord) -> Event:
            # No Redis read: an ended job has no queue position, and its ETA is 0 whatever the
            # step times (JobQueue.with_eta).
            job = self.resource_from(record, None, {}, base_url=self.settings.public_url)
            return Event(
                type=kind,
                job_id=job_id,
                error=record.error if kind != "succeeded" else None,
                job=job.model_dump(mode="json"),
            )

        def bookkeeping(pipe: Pipeline, record: JobRecord) -> None:
            pipe.delete(self.keys.cancel(job_id), self.keys.cancel_bell(job_id))
            if record.started_at is not None:
                self.queue.record_finished(pipe)

        record = self._transition(job_id, change, make_event, also=bookkeeping)
        if record is not None:
            # Counted here, once, wherever the job ended (worker, recovery, watchdog, gateway cancel).
            latency = (
                (record.finished_at - record.created_at).total_seconds()
                if record.finished_at
                else None
            )
            wait = (
                record.timings.queued_ms / 1000.0 if record.timings.queued_ms is not None else None
            )
            metrics.job_finished(self.redis, self.settings, record.status.value, latency, wait)
        return record

    # --- cancel ---------------------------------------------------------------------------------
    def cancel(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        """Cancel a queued job at once, or ask the worker to stop a running one at its next step.

        Raises:
            NotFound: unknown job (or another owner's).
            Conflict: the job already ended.
        """
        record = self.get(job_id, owner=owner)
        if record.status.is_terminal:
            raise Conflict(
                f"job {job_id} already {record.status.value}; only queued or running jobs can be canceled"
            )
        pipe = self.redis.pipeline()  # the flag, and the bell a running batch's poller waits on
        pipe.set(self.keys.cancel(job_id), "1", ex=Ttl.retention(self.settings))
        pipe.rpush(self.keys.cancel_bell(job_id), "1")
        pipe.expire(self.keys.cancel_bell(job_id), Ttl.CANCEL_BELL_S)
        pipe.execute()
        if record.status == JobStatus.queued:
            removed = self.queue.remove(record)
            if removed or self.get(job_id).status == JobStatus.queued:
                self.queue.cancel_rq_job(job_id)
                ended = self.mark_canceled(job_id)
                if ended is not None:
                    return ended
        return self.get(job_id)

    def is_cancel_requested(self, job_id: str) -> bool:
        return bool(self.redis.exists(self.keys.cancel(job_id)))

    def ended_or_cancel_requested(self, job_id: str) -> bool:
        """The job already ended, or a client asked to cancel it: both read in one round trip.

        Raises:
            NotFound: the record is gone.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(self.keys.job(job_id))
        pipe.exists(self.keys.cancel(job_id))
        raw, cancel = pipe.execute()
        if raw is None:
            raise NotFound(f"job {job_id!r} not found")
        return bool(cancel) or JobRecord.model_validate_json(raw).status.is_terminal


def _total_ms(record: JobRecord) -> float:
    return round((utcnow() - record.created_at).total_seconds() * 1000, 1)


def _pairs(flat: list) -> dict[str, float]:
    """A Lua HGETALL answer (field, value, field, value, ...) as step times."""
    return {reply_text(flat[i]): float(flat[i + 1]) for i in range(0, len(flat) - 1, 2)}


def _decode_map(raw: dict) -> dict[str, float]:
    return {reply_text(key): float(value) for key, value in raw.items()}


def _plausible_id(job_id: str) -> bool:
    return job_id.startswith("job_") and len(job_id) <= 64 and job_id[4:].isalnum()
