"""Admission to the job queues: request defaults, the MAX_QUEUED bound, idempotency keys, the RQ
queues jobs wait in, and their positions and ETAs.

Redis keys (named in keys.py):
  P:admitting               sorted set of admission reservations (token -> time), see JobQueue.admit
  P:idem:{owner}:{key}      Idempotency-Key -> {job_id, hash}
  P:stats:step_ms           hash: pixel class -> EWMA milliseconds per denoising step (ETAs)
  rq:queue:P:{queue}        the RQ queue the job waits in (RQ job id == our job id)
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time

from redis import Redis
from rq import Queue, Retry

from generative_service import rules
from generative_service.engine import paths
from generative_service.errors import Conflict, InvalidRequest, QueueFull
from generative_service.keys import Ttl
from generative_service.record import JobRecord
from generative_service.schemas import GenerationRequest, JobStatus, Progress
from generative_service.settings import Settings

# The RQ callable of a generation job. The GPU worker batches instead of calling it one by one;
# see workers/gpu_worker.py.
GENERATE_FUNC = "workers.gpu_worker.generate"
ADMIT_TTL_S = Ttl.ADMISSION_S
# KEYS[1]: the admitting sorted set (token -> time); KEYS[2..]: the RQ queue lists.
# ARGV: now, MAX_QUEUED, token, ADMIT_TTL_S. Returns 1 and records the token if there is room.
_ADMIT_SCRIPT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[1]) - tonumber(ARGV[4]))
local waiting = redis.call('ZCARD', KEYS[1])
for i = 2, #KEYS do waiting = waiting + redis.call('LLEN', KEYS[i]) end
if waiting >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def body_hash(body: dict) -> str:
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()


def default_size(settings: Settings) -> int:
    """Width/height for requests that leave them null (GENSVC_DEFAULT_SIZE, else the model's own)."""
    return paths.default_size(settings)


def pixel_class(width: int, height: int) -> str:
    return str(width * height)


def resolve(request: GenerationRequest, settings: Settings) -> GenerationRequest:
    """Fill every server-side default: size from the model, a random seed when none was given.

    Raises:
        InvalidRequest: width or height above GENSVC_MAX_SIDE.
    """
    size = default_size(settings)
    updates: dict = {}
    if request.width is None:
        updates["width"] = size
    if request.height is None:
        updates["height"] = size
    if request.seed is None:
        updates["seed"] = secrets.randbelow(2**32)
    resolved = request.model_copy(update=updates)
    for field in ("width", "height"):
        problem = rules.side_problem(getattr(resolved, field), settings.max_side)
        if problem:
            raise InvalidRequest(field, problem)
    return resolved


class JobQueue:
    """The RQ queues of generation jobs and the gate in front of them."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = settings.key_prefix
        self.keys = settings.keys
        self.admitting_key = self.keys.admitting
        self.step_ms_key = self.keys.step_ms

    # --- RQ queues ------------------------------------------------------------------------------
    def rq_queue(self, queue: str) -> Queue:
        return Queue(self.keys.rq_queue_name(queue), connection=self.redis)

    def known_queues(self) -> list[str]:
        return self.settings.routed_queues

    def waiting_count(self) -> int:
        return sum(self.rq_queue(name).count for name in self.known_queues())

    def enqueue(self, record: JobRecord) -> None:
        """Put the stored job in its RQ queue (RQ job id == our job id)."""
        retry = Retry(max=self.settings.job_retries) if self.settings.job_retries else None
        self.rq_queue(record.queue).enqueue_call(
            func=GENERATE_FUNC,
            args=(record.id,),
            job_id=record.id,
            timeout=self.settings.job_timeout_s,
            result_ttl=self.settings.retention_s,
            failure_ttl=self.settings.retention_s,
            retry=retry,
        )

    def remove(self, record: JobRecord) -> bool:
        """Take a job out of its RQ queue. True if it was still waiting there."""
        return bool(self.rq_queue(record.queue).remove(record.id))

    def cancel_rq_job(self, job_id: str) -> None:
        from rq.job import Job

        try:
            Job.fetch(job_id, connection=self.redis).cancel()
        except Exception:  # noqa: BLE001 - the RQ job may be gone already; our record is the truth
            pass

    def position(self, record: JobRecord) -> int | None:
        """1-based position among waiting jobs of its queue; None unless queued.

        A queued job that is no longer in its RQ queue has been taken by a worker that has not
        marked it running yet: it is next, position 1 (it was null in that window).
        """
        if record.status != JobStatus.queued:
            return None
        position = self.rq_queue(record.queue).get_job_position(record.id)
        return 1 if position is None else position + 1

    # --- admission ------------------------------------------------------------------------------
    def admit(self) -> str:
        """Reserve a place among the MAX_QUEUED waiting jobs, atomically. Returns the reservation.

        NOTE: checking the queue length and enqueueing later let concurrent submits overshoot the
        bound (2x with 60 at once); a reservation counts until its job is in the queue. One that a
        crashed gateway leaves behind lapses after ADMIT_TTL_S.

        Raises:
            QueueFull: MAX_QUEUED jobs wait (or are being admitted).
        """
        token = secrets.token_hex(8)
        queue_keys = [self.rq_queue(name).key for name in self.known_queues()]
        admitted = self.redis.eval(_ADMIT_SCRIPT, 1 + len(queue_keys), self.admitting_key, *queue_keys,
                                   repr(time.time()), self.settings.max_queued, token, ADMIT_TTL_S)  # fmt: skip
        if not admitted:
            raise QueueFull(
                f"queue is full ({self.settings.max_queued} jobs waiting); retry later",
                retry_after_s=self.retry_after_s(),
            )
        return token

    def release(self, token: str) -> None:
        """Drop a reservation: its job is in a queue now (counted by the queue's length) or never will be."""
        self.redis.zrem(self.admitting_key, token)

    def retry_after_s(self) -> int:
        step_ms = self.mean_step_ms() or 100.0
        return max(1, int(step_ms * 30 / 1000))

    # --- idempotency ----------------------------------------------------------------------------
    def idempotency_key(self, owner: str, key: str | None) -> str | None:
        return self.keys.idempotency(owner, key) if key else None

    def replayed_id(self, idem_key: str, digest: str) -> str | None:
        """The job id saved under `idem_key`, or None.

        Raises:
            Conflict: the key was used with a body of another hash.
        """
        raw = self.redis.get(idem_key)
        if raw is None:
            return None
        saved = json.loads(raw)
        if saved["hash"] != digest:
            raise Conflict("Idempotency-Key was already used with a different request body")
        return saved["job_id"]

    def remember(self, idem_key: str, job_id: str, digest: str) -> bool:
        """Save `job_id` under `idem_key` unless another submit got there first. True if saved."""
        return bool(
            self.redis.set(
                idem_key,
                json.dumps({"job_id": job_id, "hash": digest}),
                nx=True,
                ex=Ttl.retention(self.settings),
            )
        )

    # --- step times and ETAs --------------------------------------------------------------------
    def mean_step_ms(self, width: int | None = None, height: int | None = None) -> float | None:
        if width and height:
            value = self.redis.hget(self.step_ms_key, pixel_class(width, height))
            if value is not None:
                return float(value)
        values = [float(v) for v in self.redis.hvals(self.step_ms_key)]
        return sum(values) / len(values) if values else None

    def record_step_time(self, width: int, height: int, step_ms: float) -> None:
        old = self.redis.hget(self.step_ms_key, pixel_class(width, height))
        value = step_ms if old is None else 0.8 * float(old) + 0.2 * step_ms
        self.redis.hset(self.step_ms_key, pixel_class(width, height), value)

    def with_eta(self, record: JobRecord, position: int | None) -> Progress:
        """The record's progress with eta_s filled in (0 once ended; None without step times)."""
        progress = record.progress.model_copy()
        if record.status.is_terminal:
            progress.eta_s = 0.0
            return progress
        step_ms = self.mean_step_ms(record.request.width, record.request.height)
        if step_ms is None:
            return progress
        remaining = record.request.steps - record.progress.step
        batches_ahead = ((position or 1) - 1) // max(1, self.settings.max_batch_images)
        progress.eta_s = round(
            step_ms * (remaining + batches_ahead * record.request.steps) / 1000.0, 2
        )
        return progress
