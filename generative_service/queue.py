"""Admission to the job queues: request defaults, the MAX_QUEUED and per-key bounds, idempotency
keys, the RQ queues jobs wait in, their positions, ETAs and Retry-After.

A submit is one Redis round trip (the submit script): it checks both bounds and the idempotency
key and writes everything an accepted job needs, or nothing. The counts it checks are kept by the
record transitions themselves (JobStore.update), so a failed submit never holds a place.

Redis keys (named in keys.py):
  P:counts                  hash: `queued` (all waiting jobs), `queued:{owner}`, `running:{owner}`
  P:order:{queue}           sorted set: waiting job ids by submission sequence (queue positions)
  P:seq:{queue}             the queue's submission sequence counter
  P:tenants:{queue}         set of the RQ queue keys (one per API key) the queue's jobs wait in
  P:bell:{queue}            doorbell: an idle worker serving several RQ queues sleeps on it
  P:burst:{queue}           submits less than GENSVC_BATCH_WINDOW_MS apart (the batch filler waits only then)
  P:idem:{owner}:{key}      Idempotency-Key -> {job_id, hash}
  P:stats:step_ms           hash: pixel class -> EWMA milliseconds per denoising step (ETAs)
  P:stats:finished:{bucket} jobs finished in a 10 s bucket (throughput, for Retry-After)
  rq:queue:P:{queue}        the RQ queue anonymous jobs wait in (RQ job id == our job id)
  rq:queue:P:{queue}@{owner} the RQ queue of one API key's jobs (fair share, workers/fairshare.py)
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue, Retry
from rq.job import JobStatus as RQStatus
from rq.utils import now as rq_now
from rq.utils import utcformat

from generative_service import rules
from generative_service.engine import paths
from generative_service.errors import Conflict, InvalidRequest, QueueFull
from generative_service.keys import RQ_QUEUE_NAMESPACE, Ttl
from generative_service.record import ANONYMOUS, JobRecord
from generative_service.redis_client import reply_text
from generative_service.schemas import GenerationRequest, JobStatus, Progress
from generative_service.settings import Settings

# The RQ callable of a generation job. The GPU worker batches instead of calling it one by one;
# see workers/gpu_worker.py.
GENERATE_FUNC = "workers.gpu_worker.generate"
# Fields of the counts hash (P:counts): waiting jobs in all, and per owner waiting and running.
QUEUED = "queued"
POSITION_PLACEHOLDER = "__POSITION__"
# Throughput (for Retry-After): jobs finished per bucket of this many seconds, over this many.
THROUGHPUT_BUCKET_S = 10
THROUGHPUT_BUCKETS = 6

# One round trip per submit: idempotency, both queue bounds, the job record, the owner's index,
# RQ's job hash and queue push (the same fields and keys `Queue.enqueue_job` writes, so RQ
# workers and registries see a normal job), the queue order used for positions, the `queued`
# event and the submitted-jobs metric. Nothing is written unless the job is accepted.
#
# KEYS: 1 idempotency key ('' = none), 2 counts hash, 3 job record, 4 owner's job index,
#   5 epoch, 6 RQ job hash, 7 RQ queue list, 8 RQ's set of queues, 9 queue order (zset),
#   10 its sequence counter, 11 the job's event stream, 12 submitted-jobs metric hash,
#   13 step times hash (read only, for the ETA of the answer), 14 the queue's set of RQ queues,
#   15 the queue's burst counter (submits less than a batch window apart; the batch filler reads it),
#   16 the queue's doorbell list (wakes an idle worker serving several RQ queues)
# ARGV: 1 job id, 2 owner, 3 record JSON, 4 created (epoch s), 5 now, 6 MAX_QUEUED,
#   7 MAX_QUEUED_PER_KEY, 8 idempotency value, 9 retention s, 10 `queued` event JSON (position
#   placeholder), 11 stream maxlen, 12 stream TTL s, 13 metric label, 14 batch window ms,
#   15.. RQ job field/value pairs
# Returns {'replay', saved idempotency value} | {'full', waiting} | {'key_full', waiting of the
#   owner} | {'ok', position, event id, step times as field/value pairs}
_SUBMIT_SCRIPT = """
if KEYS[1] ~= '' then
  local saved = redis.call('GET', KEYS[1])
  if saved then return {'replay', saved} end
end
local waiting = tonumber(redis.call('HGET', KEYS[2], 'queued') or '0')
if waiting >= tonumber(ARGV[6]) then return {'full', tostring(waiting)} end
local mine = tonumber(redis.call('HGET', KEYS[2], 'queued:' .. ARGV[2]) or '0')
if mine >= tonumber(ARGV[7]) then return {'key_full', tostring(mine)} end
if KEYS[1] ~= '' then redis.call('SET', KEYS[1], ARGV[8], 'EX', ARGV[9]) end
redis.call('HINCRBY', KEYS[2], 'queued', 1)
redis.call('HINCRBY', KEYS[2], 'queued:' .. ARGV[2], 1)
redis.call('SET', KEYS[5], ARGV[5], 'NX')
redis.call('SET', KEYS[3], ARGV[3])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
local fields = {}
for i = 15, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', KEYS[6], unpack(fields))
redis.call('SADD', KEYS[8], KEYS[7])
redis.call('SADD', KEYS[14], KEYS[7])
redis.call('RPUSH', KEYS[16], '1')
redis.call('LTRIM', KEYS[16], -1, -1)
redis.call('RPUSH', KEYS[7], ARGV[1])
redis.call('ZADD', KEYS[9], redis.call('INCR', KEYS[10]), ARGV[1])
local position = redis.call('ZRANK', KEYS[9], ARGV[1]) + 1
local event = string.gsub(ARGV[10], '"__POSITION__"', tostring(position), 1)
local event_id = redis.call('XADD', KEYS[11], 'MAXLEN', '~', ARGV[11], '*', 'data', event)
redis.call('EXPIRE', KEYS[11], ARGV[12])
redis.call('HINCRBYFLOAT', KEYS[12], ARGV[13], 1)
if tonumber(ARGV[14]) > 0 then
  redis.call('INCR', KEYS[15])
  redis.call('PEXPIRE', KEYS[15], ARGV[14])
end
return {'ok', position, event_id, redis.call('HGETALL', KEYS[13])}
"""


@dataclass
class Submission:
    """What one submit sends to Redis (keys and arguments of the submit script)."""

    record: JobRecord
    keys: list[str]
    args: list
    digest: str


# KEYS[1] step-times hash; ARGV[1] pixel class, ARGV[2..] the steps' ms, in order.
_STEP_TIME_SCRIPT = """
local value = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
for i = 2, #ARGV do
  local new = tonumber(ARGV[i])
  if value then value = 0.8 * value + 0.2 * new else value = new end
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%.17g', value))
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
    """Fill every server-side default: size and guidance from the model, a random seed when none
    was given.

    Raises:
        InvalidRequest: width or height above GENSVC_MAX_SIDE.
    """
    size = default_size(settings)
    updates: dict = {}
    if request.width is None:
        updates["width"] = size
    if request.height is None:
        updates["height"] = size
    if request.guidance_scale is None:
        updates["guidance_scale"] = paths.default_guidance(settings)
    if request.seed is None:
        updates["seed"] = secrets.randbelow(rules.RANDOM_SEEDS)
    resolved = request.model_copy(update=updates)
    for field in ("width", "height"):
        problem = rules.side_problem(getattr(resolved, field), settings.max_side)
        if problem:
            raise InvalidRequest(field, problem)
    return resolved


class RQJobTemplate:
    """RQ's job hash of one queue's generation jobs, built by RQ once, filled in per job.

    `Queue.create_job(...).to_dict()` costs about a third of a submit's CPU (RQ re-resolves its
    serializer and builds a Job object each time), yet for our jobs only the id and the times
    change: the id inside the pickled call (`data`) and the `description`, and `created_at` /
    `enqueued_at`. Those are filled in as RQ fills them. Checked once against RQ itself for a
    second id: if RQ ever encodes a job differently, every job is built by RQ again.
    """

    _STAND_IN = "job_template0"

    def __init__(self, build, serializer) -> None:
        self._build = build  # job id -> RQ's own job hash (dict)
        self._serializer = serializer
        self.base = build(self._STAND_IN)
        probe = "job_template1"
        ours, theirs = self._fill(probe), build(probe)
        self.exact = _without_times(ours) == _without_times(theirs) and ours.keys() == theirs.keys()

    def fields(self, job_id: str) -> dict:
        return self._fill(job_id) if self.exact else self._build(job_id)

    def _fill(self, job_id: str) -> dict:
        fields = dict(self.base)
        stamp = utcformat(rq_now())
        fields["created_at"] = fields["enqueued_at"] = stamp
        kwargs: dict[str, object] = {}  # (func, instance, args, kwargs): what RQ pickles
        fields["data"] = zlib.compress(
            self._serializer.dumps((GENERATE_FUNC, None, (job_id,), kwargs))
        )
        fields["description"] = str(fields["description"]).replace(
            repr(self._STAND_IN), repr(job_id)
        )
        return fields


def _without_times(fields: dict) -> dict:
    return {k: v for k, v in fields.items() if k not in ("created_at", "enqueued_at")}


class JobQueue:
    """The RQ queues of generation jobs, the bounds in front of them, and positions."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.prefix = settings.key_prefix
        self.keys = settings.keys
        self.counts_key = self.keys.counts
        self.step_ms_key = self.keys.step_ms
        self._queues: dict[str, Queue] = {}
        self._rq_templates: dict[str, RQJobTemplate] = {}
        self._submit = redis.register_script(_SUBMIT_SCRIPT)
        self._step_time = redis.register_script(_STEP_TIME_SCRIPT)

    # --- RQ queues ------------------------------------------------------------------------------
    def rq_queue(self, queue: str) -> Queue:
        """The RQ queue of logical `queue` (where anonymous jobs wait)."""
        name = self.keys.rq_queue_name(queue)
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis)
        return self._queues[name]

    def tenant_queue_name(self, queue: str, owner: str) -> str:
        """The RQ queue a job of `owner` waits in: one per API key and logical queue, so a
        worker's round-robin dequeue serves keys in turn (fair share). Anonymous jobs (no API
        keys configured) wait in the logical queue's own RQ queue."""
        if owner == ANONYMOUS:
            return self.keys.rq_queue_name(queue)
        return self.keys.rq_tenant_queue_name(queue, owner)

    def rq_queue_of(self, record: JobRecord) -> Queue:
        """The RQ queue `record` waits in."""
        name = self.tenant_queue_name(record.queue, record.owner)
        if name not in self._queues:
            self._queues[name] = Queue(name, connection=self.redis)
        return self._queues[name]

    def tenants_key(self, queue: str) -> str:
        """Set of the RQ queue keys jobs of logical `queue` were ever put in (one per key)."""
        return self.keys.tenants(queue)

    def served_queue_names(self, queue: str) -> list[str]:
        """Every RQ queue of logical `queue`: its own first, then each key's, in a stable order."""
        base = self.keys.rq_queue_name(queue)
        keys = self.redis.smembers(self.tenants_key(queue))  # RQ queue keys
        members = sorted(reply_text(key).removeprefix(RQ_QUEUE_NAMESPACE) for key in keys)
        return [base, *(name for name in members if name != base)]

    def order_key(self, queue: str) -> str:
        """Sorted set of the queue's waiting job ids by submission sequence (positions)."""
        return self.keys.order(queue)

    def burst_key(self, queue: str) -> str:
        """Submits to `queue` less than a batch window apart (expires a window after the last)."""
        return self.keys.burst(queue)

    def bell_key(self, queue: str) -> str:
        """A list of at most one element the submit script pushes to (workers/fairshare.py)."""
        return self.keys.bell(queue)

    def sequence_key(self, queue: str) -> str:
        return self.keys.sequence(queue)

    def known_queues(self) -> list[str]:
        return self.settings.routed_queues

    def waiting_count(self) -> int:
        """Jobs waiting (status queued) in all queues."""
        return int(self.redis.hget(self.counts_key, QUEUED) or 0)

    def rq_job_fields(self, record: JobRecord) -> list:
        """RQ's job hash for `record`, field/value pairs, exactly as `Queue.enqueue_job` saves it."""
        queue = self.rq_queue_of(record)
        template = self._rq_templates.get(queue.name)
        if template is None:
            template = self._rq_templates[queue.name] = RQJobTemplate(
                lambda job_id: self._rq_job_dict(queue, job_id), queue.serializer
            )
        return [item for pair in template.fields(record.id).items() for item in pair]

    def _rq_job_dict(self, queue: Queue, job_id: str) -> dict:
        """RQ's own job hash for a queued generation job `job_id` in `queue` (RQ builds it)."""
        retry = Retry(max=self.settings.job_retries) if self.settings.job_retries else None
        job = queue.create_job(
            func=GENERATE_FUNC,
            args=(job_id,),
            job_id=job_id,
            timeout=self.settings.job_timeout_s,
            result_ttl=Ttl.retention(self.settings),
            failure_ttl=Ttl.retention(self.settings),
            retry=retry,
        )
        job.origin = queue.name
        job.enqueued_at = rq_now()
        job._status = RQStatus.QUEUED
        return job.to_dict()

    def submit(self, submission: Submission) -> list:
        return self._submit(keys=submission.keys, args=submission.args)

    async def submit_async(self, redis: AsyncRedis, submission: Submission) -> list:
        # NOTE: EVALSHA first (the script is cached after the first submit), EVAL when Redis
        # does not know it (a restarted or other Redis).
        from redis.exceptions import NoScriptError

        keys, args = submission.keys, submission.args
        try:
            return await redis.evalsha(self._submit.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await redis.eval(_SUBMIT_SCRIPT, len(keys), *keys, *args)

    def queue_full(self, reply: list, owner_bound: bool) -> QueueFull:
        """The 429 for a submit the script refused."""
        if owner_bound:
            return QueueFull(
                f"this API key has {int(reply[1])} jobs waiting (GENSVC_MAX_QUEUED_PER_KEY="
                f"{self.settings.max_queued_per_key}); retry later",
                retry_after_s=self.retry_after_s(int(reply[1])),
            )
        return QueueFull(
            f"queue is full ({self.settings.max_queued} jobs waiting); retry later",
            retry_after_s=self.retry_after_s(int(reply[1])),
        )

    def remove(self, record: JobRecord) -> bool:
        """Take a job out of its RQ queue. True if it was still waiting there."""
        return bool(self.rq_queue_of(record).remove(record.id))

    def cancel_rq_job(self, job_id: str) -> None:
        from rq.job import Job

        try:
            Job.fetch(job_id, connection=self.redis).cancel()
        except Exception:  # noqa: BLE001 - the RQ job may be gone already; our record is the truth
            pass

    def position(self, record: JobRecord) -> int | None:
        """1-based position among waiting jobs of its queue, in submission order; None unless
        queued. O(log n): the rank in the queue's order set, which cancels, starts and retries
        keep (JobStore.update)."""
        if record.status != JobStatus.queued:
            return None
        rank = self.redis.zrank(self.order_key(record.queue), record.id)
        if not isinstance(rank, int):  # None: queued but not ranked: a worker took it, next
            return 1
        return rank + 1

    def status_change(self, pipe, record: JobRecord, old: JobStatus, front_score: float) -> None:
        """Queue the counter and order changes of `record` moving from `old` to its status
        (inside the transaction that stores the record)."""
        new = record.status
        if old == new:
            return
        if old == JobStatus.queued:
            pipe.hincrby(self.counts_key, QUEUED, -1)
            pipe.hincrby(self.counts_key, f"queued:{record.owner}", -1)
            pipe.zrem(self.order_key(record.queue), record.id)
        if new == JobStatus.queued:  # a retry: back at the front, as in its RQ queue
            pipe.hincrby(self.counts_key, QUEUED, 1)
            pipe.hincrby(self.counts_key, f"queued:{record.owner}", 1)
            pipe.zadd(self.order_key(record.queue), {record.id: front_score})
        if old == JobStatus.running:
            pipe.hincrby(self.counts_key, f"running:{record.owner}", -1)
        if new == JobStatus.running:
            pipe.hincrby(self.counts_key, f"running:{record.owner}", 1)

    def front_score(self, queue: str) -> float:
        """A score that sorts before every waiting job of `queue`."""
        first = self.redis.zrange(self.order_key(queue), 0, 0, withscores=True)
        return (float(first[0][1]) - 1) if first else 0.0

    def running_count(self, owner: str) -> int:
        return int(self.redis.hget(self.counts_key, f"running:{owner}") or 0)

    # --- throughput and Retry-After ---------------------------------------------------------
    def finished_key(self, bucket: int) -> str:
        return self.keys.finished(bucket)

    def record_finished(self, pipe) -> None:
        """Count one finished job in the current throughput bucket (queued on `pipe`)."""
        key = self.finished_key(int(time.time()) // THROUGHPUT_BUCKET_S)
        pipe.incr(key)
        pipe.expire(key, THROUGHPUT_BUCKET_S * (THROUGHPUT_BUCKETS + 2))

    def throughput(self) -> float | None:
        """Jobs finished per second over the last THROUGHPUT_BUCKETS full buckets, all workers;
        None before any finished."""
        now_bucket = int(time.time()) // THROUGHPUT_BUCKET_S
        keys = [self.finished_key(now_bucket - i) for i in range(1, THROUGHPUT_BUCKETS + 1)]
        done = sum(int(value) for value in self.redis.mget(keys) if value is not None)
        return done / (THROUGHPUT_BUCKET_S * THROUGHPUT_BUCKETS) if done else None

    def retry_after_s(self, waiting: int) -> int:
        """Seconds until a tenth of the `waiting` backlog (at least one job) has been served at
        the measured throughput; without a measurement, one batch of MAX_BATCH_IMAGES at the
        measured step time (30 steps). Between 1 and 600."""
        rate = self.throughput()
        if rate is None:
            step_ms = self.mean_step_ms() or 100.0
            rate = self.settings.max_batch_images / (step_ms * 30 / 1000.0)
        return int(min(600, max(1, math.ceil(max(1, waiting / 10) / rate))))

    # --- idempotency ----------------------------------------------------------------------------
    def idempotency_key(self, owner: str, key: str | None) -> str | None:
        return self.keys.idempotency(owner, key) if key else None

    @staticmethod
    def idempotency_value(job_id: str, digest: str) -> str:
        return json.dumps({"job_id": job_id, "hash": digest})

    @staticmethod
    def replayed_id(saved: bytes | str, digest: str) -> str:
        """The job id saved under an idempotency key (the submit script's `replay` answer).

        Raises:
            Conflict: the key was used with a body of another hash.
        """
        value = json.loads(saved)
        if value["hash"] != digest:
            raise Conflict("Idempotency-Key was already used with a different request body")
        return value["job_id"]

    # --- step times and ETAs --------------------------------------------------------------------
    def step_times(self) -> dict[str, float]:
        return {reply_text(k): float(v) for k, v in self.redis.hgetall(self.step_ms_key).items()}

    def mean_step_ms(self, width: int | None = None, height: int | None = None) -> float | None:
        return mean_step_ms(self.step_times(), width, height)

    def record_step_times(self, width: int, height: int, steps_ms: Sequence[float]) -> None:
        """Fold step times, in order, into the EWMA of their pixel class (0.8 old + 0.2 new per
        step), in one round trip (the worker records every step, a few at a time)."""
        if steps_ms:
            self._step_time(
                keys=[self.step_ms_key], args=[pixel_class(width, height), *map(repr, steps_ms)]
            )

    def with_eta(
        self, record: JobRecord, position: int | None, step_times: dict[str, float] | None = None
    ) -> Progress:
        """The record's progress with eta_s filled in (0 once ended; None without step times)."""
        progress = record.progress.model_copy()
        if record.status.is_terminal:
            progress.eta_s = 0.0
            return progress
        if step_times is None:
            step_times = self.step_times()
        step_ms = mean_step_ms(step_times, record.request.width, record.request.height)
        if step_ms is None:
            return progress
        remaining = record.request.steps - record.progress.step
        batches_ahead = ((position or 1) - 1) // max(1, self.settings.max_batch_images)
        progress.eta_s = round(
            step_ms * (remaining + batches_ahead * record.request.steps) / 1000.0, 2
        )
        return progress


def mean_step_ms(
    step_times: dict[str, float], width: int | None = None, height: int | None = None
) -> float | None:
    """The step time of jobs of width x height, else the mean over all sizes; None without any."""
    if width and height and pixel_class(width, height) in step_times:
        return step_times[pixel_class(width, height)]
    values = list(step_times.values())
    return sum(values) / len(values) if values else None
