"""Every Redis key the service uses: its name, its type, how long it lives and who writes it.

No other module formats a key (tests/test_keys.py greps for it): they ask `Keys(prefix)` (or
`settings.keys`) for the name and `Ttl` for the lifetime. Only `purge` talks to Redis. The data
model, with the job state machine around it, is described in docs/architecture.md.

P is the key prefix (GENSVC_KEY_PREFIX). RETENTION is GENSVC_RETENTION_S.

  key                            type     lifetime                       written by
  P:job:{id}                     string   none while live; RETENTION     jobs.JobStore
                                          once terminal
  P:cancel:{id}                  string   RETENTION (deleted at the end) JobStore.cancel
  P:cancel-bell:{id}             list     CANCEL_BELL (deleted at the     JobStore.cancel; the
                                          end)                           cancel poller waits on it
  P:events:{id}                  stream   RETENTION + 1 h, renewed       events.publish
  P:owner:{owner}                zset     none (expired ids pruned)      JobStore.create
  P:idem:{owner}:{key}           string   RETENTION                      queue.JobQueue
  P:counts                       hash     none (fields follow the jobs)  queue.JobQueue (submit
                                          queued, queued:{owner},        script) and
                                          running:{owner}                JobStore.update
  P:order:{queue}                zset     none (ids leave on start,      queue.JobQueue: positions
                                          cancel, end)
  P:seq:{queue}                  string   none                           submit script
  P:tenants:{queue}              set      none                           submit script (RQ queue
                                                                         keys, one per API key)
  P:bell:{queue}                 list     none (at most one element)     submit script; workers
                                                                         sleep on it
  P:burst:{queue}                string   BATCH_WINDOW after the last    submit script
                                          submit
  P:stats:finished:{bucket}      string   8 buckets of 10 s              JobStore (throughput)
  P:stats:step_ms                hash     none                           queue.JobQueue
  P:epoch                        string   none                           JobStore
  P:{queue} (RQ queue name)      -        RQ: list rq:queue:P:{queue}    queue.JobQueue (RQ)
  P:{queue}@{owner} (RQ queue)   -        RQ: one per API key            queue.JobQueue (RQ)
  P:worker:{id}                  string   WORKER_DEAD_AFTER, renewed     workers/liveness.py
  P:models                       string   none (overwritten)             workers/liveness.py
  P:models:layers                string   none (written when missing)    workers/liveness.py
  P:running                      hash     none (entries removed)         workers/runner.py
  P:maintenance:{rq queue}       string   max(5 s, WORKER_MAINTENANCE)   workers/recovery.py
  P:maintenance:purge-images     string   min(1 h, RETENTION)            workers/recovery.py
  P:emb:{digest}                 string   EMBEDDING_CACHE_TTL            engine/prompts.py
  P:metrics:counter:{name}       hash     none                           metrics.py
  P:metrics:hist:{name}          hash     none                           metrics.py
  P:webhooks (RQ queue name)     -        RQ: list rq:queue:P:webhooks   webhooks/outbox.py
  P:webhook:throttle:{id}        string   WEBHOOK_PROGRESS_INTERVAL      webhooks/outbox.py
  P:webhook:log:{id}             list     RETENTION, renewed             webhooks/attempts.py
  P:eval:{id}                    string   EVAL_RETENTION after a vote    evals/store.py
  P:eval:{id}:votes              hash     EVAL_RETENTION after a vote    evals/store.py
  P:evals:{owner}                zset     EVAL_RETENTION after a vote    evals/store.py
  P:replication-probe            string   60 s                           redis_client.py
  P:hub:{token}                  stream   120 s, renewed                 api/stream_hub.py
"""

from __future__ import annotations

from typing import Any, Protocol

RQ_QUEUE_NAMESPACE = "rq:queue:"  # rq.Queue.redis_queue_namespace_prefix (asserted in the tests)


class Keys:
    """The key names under one prefix."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def __repr__(self) -> str:
        return f"Keys({self.prefix!r})"

    def _key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    # --- jobs -----------------------------------------------------------------------------------
    def job(self, job_id: str) -> str:
        return self._key("job", job_id)

    def cancel(self, job_id: str) -> str:
        return self._key("cancel", job_id)

    def cancel_bell(self, job_id: str) -> str:
        """Pushed to with the cancel flag: a running batch's cancel poller blocks on it."""
        return self._key("cancel-bell", job_id)

    def events(self, job_id: str) -> str:
        return self._key("events", job_id)

    def owner(self, owner: str) -> str:
        return self._key("owner", owner)

    def idempotency(self, owner: str, key: str) -> str:
        return self._key("idem", owner, key)

    @property
    def step_ms(self) -> str:
        return self._key("stats", "step_ms")

    @property
    def epoch(self) -> str:
        return self._key("epoch")

    # --- queues ---------------------------------------------------------------------------------
    def rq_queue_name(self, queue: str) -> str:
        """The RQ queue name of logical queue `queue` (RQ keeps its list at rq:queue:{name})."""
        return self._key(queue)

    def rq_queue_list(self, queue: str) -> str:
        """The Redis list RQ keeps logical queue `queue`'s waiting jobs in."""
        return RQ_QUEUE_NAMESPACE + self.rq_queue_name(queue)

    def logical_queue(self, rq_name: str) -> str | None:
        """The logical queue of an RQ queue name (or its `rq:queue:` key); None if not ours."""
        name = rq_name.removeprefix(RQ_QUEUE_NAMESPACE)
        ours = self._key("")
        # An API key's queue (`P:{queue}@{owner}`) belongs to its logical queue.
        return name[len(ours) :].partition("@")[0] if name.startswith(ours) else None

    def rq_tenant_queue_name(self, queue: str, owner: str) -> str:
        """The RQ queue name of one API key's jobs in logical queue `queue` (fair share)."""
        return f"{self.rq_queue_name(queue)}@{owner}"

    @property
    def counts(self) -> str:
        """Hash: `queued` (all waiting jobs), `queued:{owner}`, `running:{owner}`."""
        return self._key("counts")

    def order(self, queue: str) -> str:
        """Sorted set of the queue's waiting job ids by submission sequence (positions)."""
        return self._key("order", queue)

    def sequence(self, queue: str) -> str:
        return self._key("seq", queue)

    def tenants(self, queue: str) -> str:
        """Set of the RQ queue keys the jobs of logical `queue` wait in (one per API key)."""
        return self._key("tenants", queue)

    def bell(self, queue: str) -> str:
        """A list of at most one element the submit script pushes to; idle workers wait on it."""
        return self._key("bell", queue)

    def burst(self, queue: str) -> str:
        """Submits to `queue` less than a batch window apart (expires a window after the last)."""
        return self._key("burst", queue)

    def finished(self, bucket: int) -> str:
        """Jobs finished in one THROUGHPUT bucket (Retry-After's measured throughput)."""
        return self._key("stats", "finished", str(bucket))

    @property
    def webhooks_queue(self) -> str:
        """The RQ queue name of webhook deliveries."""
        return self._key("webhooks")

    # --- workers --------------------------------------------------------------------------------
    def worker(self, worker_id: str) -> str:
        return self._key("worker", worker_id)

    @property
    def worker_pattern(self) -> str:
        """SCAN pattern matching every worker liveness key."""
        return self._key("worker", "*")

    def worker_id(self, key: str) -> str:
        """The worker id of a liveness key."""
        return key.removeprefix(self._key("worker", ""))

    @property
    def models(self) -> str:
        return self._key("models")

    @property
    def model_layers(self) -> str:
        """Layer shapes of the served model, which LoRA uploads are checked against (lora_fit.py)."""
        return self._key("models", "layers")

    @property
    def running(self) -> str:
        return self._key("running")

    def maintenance_lock(self, rq_queue_name: str) -> str:
        return self._key("maintenance", rq_queue_name)

    # --- engine, metrics, webhooks, gateway -----------------------------------------------------
    def embedding(self, digest: str) -> str:
        return self._key("emb", digest)

    def counter(self, name: str) -> str:
        return self._key("metrics", "counter", name)

    def histogram(self, name: str) -> str:
        return self._key("metrics", "hist", name)

    def webhook_throttle(self, job_id: str) -> str:
        return self._key("webhook", "throttle", job_id)

    def webhook_log(self, job_id: str) -> str:
        return self._key("webhook", "log", job_id)

    def eval_study(self, study_id: str) -> str:
        return self._key("eval", study_id)

    def eval_votes(self, study_id: str) -> str:
        return self._key("eval", study_id, "votes")

    def eval_owner(self, owner: str) -> str:
        return self._key("evals", owner)

    @property
    def replication_probe(self) -> str:
        return self._key("replication-probe")

    def hub_wake(self, token: str) -> str:
        return self._key("hub", token)

    def purge(self, redis: Any, *, batch: int = 500) -> None:
        """Delete every key under this prefix: ours, its RQ queues and registries, its RQ jobs.

        For tests and benchmarks that share a Redis (each run has its own prefix); never FLUSHDB.
        """
        job_ids = [
            _text(key).rsplit(":", 1)[-1]
            for key in redis.scan_iter(match=self._key("job", "*"), count=batch)
        ]
        keys = list(redis.scan_iter(match=self._key("*"), count=batch))
        keys += list(redis.scan_iter(match=f"rq:*{self._key('*')}", count=batch))
        keys += [f"rq:job:{job_id}" for job_id in job_ids]
        keys += [f"rq:results:{job_id}" for job_id in job_ids]
        for start in range(0, len(keys), batch):
            redis.delete(*keys[start : start + batch])
        for member in redis.smembers("rq:queues"):
            if f":{self._key('')}" in _text(member):
                redis.srem("rq:queues", member)

    @classmethod
    def of_events_key(cls, events_key: str) -> Keys:
        """The Keys whose `events()` made `events_key` (the stream hub only sees stream keys)."""
        return cls(events_key.partition(":events:")[0])


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Lifetimes(Protocol):
    retention_s: int
    worker_dead_after_s: int
    worker_maintenance_s: int
    webhook_progress_interval_s: float
    embedding_cache_ttl_s: int


class Ttl:
    """Lifetimes of the keys above, from the settings (seconds unless the name says ms)."""

    HUB_WAKE_S = 120
    CANCEL_BELL_S = 300  # only wakes a poller that is waiting; the flag is the lasting record
    REPLICATION_PROBE_MS = 60_000

    @staticmethod
    def retention(settings: _Lifetimes) -> int:
        """A terminal job record, its cancel flag, idempotency keys and webhook log."""
        return settings.retention_s

    @staticmethod
    def events(settings: _Lifetimes) -> int:
        """A job's event stream: an hour past the record, so a late reader still sees the end."""
        return settings.retention_s + 3600

    @staticmethod
    def worker(settings: _Lifetimes) -> int:
        return settings.worker_dead_after_s

    @staticmethod
    def maintenance_lock(settings: _Lifetimes) -> int:
        return max(5, settings.worker_maintenance_s)

    @staticmethod
    def webhook_throttle_ms(settings: _Lifetimes) -> int:
        return int(settings.webhook_progress_interval_s * 1000)

    @staticmethod
    def embedding(settings: _Lifetimes) -> int:
        return settings.embedding_cache_ttl_s
