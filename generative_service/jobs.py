"""Job records in Redis and the named state changes that also emit the job's events.

Redis keys (named in keys.py):
  P:job:{id}                JSON JobRecord (the job resource plus owner and worker)
  P:cancel:{id}             set when a client cancels a running job; the worker polls it each step
  P:events:{id}             the job's event stream (events.py)
  P:owner:{owner}           sorted set of the owner's job ids by creation time (listing)
  P:epoch                   when this Redis's data begins (a restart without persistence starts anew)

Gateway and worker both change records; every change is a WATCH/MULTI read-modify-write so
neither overwrites the other. A terminal record never changes again. Admission (the queue bound,
idempotency, enqueueing, positions and ETAs) lives in queue.py.
"""

from __future__ import annotations

import hashlib
import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime

from redis import Redis, WatchError

from generative_service import events, logs, metrics, webhooks
from generative_service.errors import Conflict, InvalidRequest, NotFound
from generative_service.keys import Ttl
from generative_service.queue import JobQueue, body_hash, resolve
from generative_service.record import ANONYMOUS, JobRecord
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


class JobStore:
    """Creates, reads and changes job records; every change emits the matching event."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = settings.key_prefix
        self.keys = settings.keys
        self.queue = JobQueue(redis, settings)

    # --- submit ---------------------------------------------------------------------------------
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
            QueueFull: more than MAX_QUEUED jobs wait.
        """
        idem_key = self.queue.idempotency_key(owner, idempotency_key)
        digest = body_hash(raw_body if raw_body is not None else request.model_dump(mode="json"))
        if idem_key:
            existing = self._idempotent_replay(idem_key, digest)
            if existing is not None:
                return existing, False
        token = self.queue.admit()
        # NOTE: every way out after admission drops the reservation (an error in between used to
        # hold a queue slot for ADMIT_TTL_S); once enqueued the job is counted by its queue.
        try:
            resolved = resolve(request, self.settings)
            record = JobRecord(
                id=new_job_id(),
                owner=owner,
                created_at=utcnow(),
                queue=self.settings.queue_for(
                    pixels=resolved.width * resolved.height,
                    loras=[lora.name for lora in resolved.loras],
                ),
                request=resolved,
                progress=Progress(stage=Stage.queued, total_steps=resolved.steps),
            )
            if idem_key and not self.queue.remember(idem_key, record.id, digest):
                existing = self._idempotent_replay(
                    idem_key, digest
                )  # lost a race with the same key
                if existing is not None:
                    return existing, False
            pipe = self.redis.pipeline(transaction=True)
            pipe.set(self.keys.epoch, repr(time.time()), nx=True)
            pipe.set(self.keys.job(record.id), record.model_dump_json())
            pipe.zadd(self.keys.owner(owner), {record.id: record.created_at.timestamp()})
            pipe.execute()
            self.queue.enqueue(record)
        finally:
            self.queue.release(token)
        metrics.job_submitted(self.redis, self.settings, record.queue)
        log.info(
            "job.submitted",
            extra={"job_id": record.id, "queue": record.queue, "owner": owner, "width": resolved.width, "height": resolved.height,
                   "steps": resolved.steps, "images": resolved.num_images, "prompt": logs.prompt_field(self.settings, resolved.prompt)},
        )  # fmt: skip
        self._emit(
            record, Event(type="queued", job_id=record.id, position=self.queue.position(record))
        )
        return record, True

    def _idempotent_replay(self, idem_key: str, digest: str) -> JobRecord | None:
        job_id = self.queue.replayed_id(idem_key, digest)
        if job_id is None:
            return None
        try:
            return self.get(job_id)
        except NotFound:
            return None

    # --- read -----------------------------------------------------------------------------------
    def get(self, job_id: str, *, owner: str | None = None) -> JobRecord:
        """The job, or NotFound. With `owner`, another owner's job is NotFound too (no leak)."""
        raw = self.redis.get(self.keys.job(job_id)) if _plausible_id(job_id) else None
        if raw is None:
            raise NotFound(f"job {job_id!r} not found" + self._lost_note(job_id))
        record = JobRecord.model_validate_json(raw)
        if owner is not None and record.owner != owner:
            raise NotFound(f"job {job_id!r} not found")  # never the note: it exists, just not yours
        return record

    def epoch(self) -> float:
        """When this Redis's data begins (set once, on first use; never expires). A Redis that
        restarted without persistence starts a new epoch: every job created before it is gone."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.epoch, repr(time.time()), nx=True)
        pipe.get(self.keys.epoch)
        return float(pipe.execute()[1])

    def _lost_note(self, job_id: str) -> str:
        """For a missing job whose id says it was created within retention but before the epoch."""
        try:
            created = int(job_id[4:12], 16)
        except ValueError:
            return ""
        epoch = self.epoch()
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
            ids = self.redis.zrevrangebyscore(
                self.keys.owner(owner), max_score, "-inf", start=0, num=limit * 2, withscores=True
            )
            if not ids:
                break
            for job_id, score in ids:
                max_score = f"({score!r}"
                try:
                    record = self.get(job_id.decode() if isinstance(job_id, bytes) else job_id)
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
        data = record.model_dump(exclude={"owner", "worker_id"})
        data["queue_position"] = self.queue.position(record)
        data["progress"] = self.queue.with_eta(record, data["queue_position"])
        root = f"{base_url}/v1/jobs/{record.id}"
        data["links"] = Links(
            self=root, events=f"{root}/events", cancel=f"{root}/cancel", webhooks=f"{root}/webhooks"
        )
        for image in data["images"]:
            if image["url"] and image["url"].startswith("/"):
                image["url"] = base_url + image["url"]
        return JobResource.model_validate(data)

    # --- state changes --------------------------------------------------------------------------
    def update(self, job_id: str, change: Callable[[JobRecord], bool | None]) -> JobRecord:
        """Atomically apply `change` to the stored record. `change` returns False to skip writing."""
        key = self.keys.job(job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(f"job {job_id!r} not found")
                    record = JobRecord.model_validate_json(raw)
                    if change(record) is False:
                        pipe.unwatch()
                        return record
                    pipe.multi()
                    pipe.set(key, record.model_dump_json(), keepttl=True)
                    if record.status.is_terminal:
                        pipe.expire(key, Ttl.retention(self.settings))
                    pipe.execute()
                    return record
                except WatchError:
                    continue

    def _emit(self, record: JobRecord, event: Event) -> str:
        event_id = events.publish(self.redis, self.prefix, event, ttl_s=Ttl.events(self.settings))
        if record.request.webhook:
            webhooks.on_event(self.redis, self.settings, record, event)
        return event_id

    def _transition(
        self,
        job_id: str,
        change: Callable[[JobRecord], bool | None],
        make_event: Callable[[JobRecord], Event],
    ) -> JobRecord | None:
        """Apply `change` unless the job already ended; emit the event. None if it had ended."""
        changed = False

        def guarded(record: JobRecord) -> bool | None:
            nonlocal changed
            if record.status.is_terminal:
                return False
            changed = change(record) is not False
            return changed

        record = self.update(job_id, guarded)
        if not changed:
            return None
        self._emit(record, make_event(record))
        return record

    def mark_started(self, job_id: str, *, batch: BatchInfo, worker_id: str) -> JobRecord | None:
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

        return self._transition(job_id, change, lambda r: Event(type="started", job_id=job_id))

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
        images: list[ImageInfo],
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
        )

    def _finish(
        self, job_id: str, change: Callable[[JobRecord], None], kind: str
    ) -> JobRecord | None:
        def make_event(record: JobRecord) -> Event:
            job = self.to_resource(record, base_url=self.settings.public_url).model_dump(
                mode="json"
            )
            return Event(
                type=kind,
                job_id=job_id,
                error=record.error if kind != "succeeded" else None,
                job=job,
            )

        record = self._transition(job_id, change, make_event)
        if record is not None:
            self.redis.delete(self.keys.cancel(job_id))
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
        self.redis.set(self.keys.cancel(job_id), "1", ex=Ttl.retention(self.settings))
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


def _total_ms(record: JobRecord) -> float:
    return round((utcnow() - record.created_at).total_seconds() * 1000, 1)


def _plausible_id(job_id: str) -> bool:
    return job_id.startswith("job_") and len(job_id) <= 64 and job_id[4:].isalnum()
