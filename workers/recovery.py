"""Finding the jobs of dead workers and settling them: retried, or failed with `worker_lost`.

Two paths, both run by every live GPU worker's maintenance thread (one worker per queue at a
time, under a Redis lock):

1. RQ's own: a running job's started-registry entry expires GENSVC_WORKER_DEAD_AFTER_S after its
   worker's last heartbeat. `StartedJobRegistry.cleanup()` then retries it (RQ `Retry`, i.e.
   GENSVC_JOB_RETRIES) or moves it to the failed registry, and first calls our exception handler
   with `AbandonedJobError`, which brings the job record along (`mark_requeued` / `mark_failed`).
2. A backstop over `P:running` (job id -> the worker incarnation running it): a job whose worker's
   liveness key is gone is settled from its RQ state. It catches what path 1 cannot see: RQ
   cleanup run by another tool without our handler, an entry that never reached the registry.

A lost job is found within about WORKER_DEAD_AFTER_S + WORKER_MAINTENANCE_S.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from rq import worker_registration
from rq.exceptions import AbandonedJobError, NoSuchJobError
from rq.job import Job
from rq.job import JobStatus as RqStatus
from rq.job_lifecycle import record_job_failure
from rq.queue import Queue
from rq.registry import clean_registries

from generative_service.errors import NotFound
from generative_service.keys import Ttl
from generative_service.logs import get_logger
from generative_service.schemas import JobStatus

PURGE_EVERY_S = 3600

if TYPE_CHECKING:
    from redis import Redis

    from generative_service.jobs import JobStore
    from generative_service.storage import Storage

log = get_logger(__name__)


def settle_lost(store: JobStore, job_id: str, *, retry: bool, cause: str) -> None:
    """Bring the record of a job whose worker is gone in line with what RQ does with it.

    Args:
        retry: RQ puts the job back in its queue (a retry is left); else RQ fails it.
        cause: what happened, for the message ("stopped answering", ...).
    """
    settings = store.settings
    try:
        record = store.get(job_id)
    except NotFound:
        return
    store.redis.hdel(settings.keys.running, job_id)
    if record.status.is_terminal:
        return
    worker = record.worker_id or "unknown"
    if retry and record.status == JobStatus.queued:
        return  # never started (lost right after it was dequeued): it simply runs again
    if retry:
        store.mark_requeued(
            job_id,
            reason=f"worker {worker} {cause}; the job was put back in the queue (retry {record.attempts} of {settings.job_retries})",
        )
        log.warning("job.requeued", extra={"job_id": job_id, "worker_id": worker, "cause": cause})
        return
    used = (
        f"its {settings.job_retries} retr{'y was' if settings.job_retries == 1 else 'ies were'} used up"
        if settings.job_retries
        else "retries are off (GENSVC_JOB_RETRIES=0)"
    )
    store.mark_failed(
        job_id,
        code="worker_lost",
        message=f"worker {worker} {cause} while running this job, and {used}",
    )
    log.warning("job.worker_lost", extra={"job_id": job_id, "worker_id": worker, "cause": cause})


def abandoned_handler(store: JobStore) -> Callable:
    """An RQ exception handler: settles the record of a job RQ found abandoned in cleanup."""
    dead_s = store.settings.worker_dead_after_s

    def handle(
        job: Job, exc_type: type, exc_value: BaseException | None, traceback: object
    ) -> None:
        if exc_type is AbandonedJobError or isinstance(exc_value, AbandonedJobError):
            retry = bool(job.retries_left and job.retries_left > 0)
            settle_lost(
                store, job.id, retry=retry, cause=f"stopped answering (no heartbeat for {dead_s} s)"
            )
        return None  # let the other handlers run

    return handle


class Maintenance(threading.Thread):
    """Every WORKER_MAINTENANCE_S: RQ registry cleanup for our queues, then the backstop scan."""

    def __init__(
        self, *, redis: Redis, store: JobStore, queue_names: list[str], get_worker: Callable
    ) -> None:
        super().__init__(name="maintenance", daemon=True)
        self.redis = redis
        self.store = store
        self.settings = store.settings
        self.queues = [Queue(name, connection=redis) for name in queue_names]
        self.get_worker = get_worker
        self.before_cleanup: Callable[[], None] | None = None
        # Every API key's RQ queue of the served logical queues (fair share); None = queue_names.
        self.served: Callable[[], list[str]] | None = None
        self.handler = abandoned_handler(store)
        self.dead_since: dict[str, float] = {}
        self.stopped = threading.Event()
        self.storage: Storage | None = None  # set: images past GENSVC_RETENTION_S are purged

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.tick()
            except RedisError as exc:
                log.warning("maintenance.redis_error", extra={"error": repr(exc)})
            except Exception:  # noqa: BLE001 - maintenance must keep running
                log.exception("maintenance.failed")
            self.stopped.wait(self.settings.worker_maintenance_s)

    def stop(self) -> None:
        self.stopped.set()

    def tick(self) -> None:
        """One maintenance round (public for tests and the worker's start)."""
        worker = self.get_worker()
        if self.before_cleanup is not None:
            # Renew our own running jobs first: a starved heartbeat thread must not make this
            # worker's own cleanup take its live jobs for dead ones.
            self.before_cleanup()
        if self.served is not None:
            known = {queue.name: queue for queue in self.queues}
            self.queues = [known.get(n) or Queue(n, connection=self.redis) for n in self.served()]
        for queue in self.queues:
            lock = self.settings.keys.maintenance_lock(queue.name)
            if not self.redis.set(lock, "1", nx=True, ex=Ttl.maintenance_lock(self.settings)):
                continue  # another worker is cleaning this queue right now
            try:
                clean_registries(queue, [self.handler])
                worker_registration.clean_worker_registry(queue)
                if worker is not None:
                    queue.intermediate_queue.cleanup(worker, queue)
            finally:
                self.redis.delete(lock)
        self.scan_running()
        self.purge_images()

    def purge_images(self) -> None:
        """Delete stored images older than the retention, at most once an hour across all workers."""
        if self.storage is None:
            return
        every_s = min(PURGE_EVERY_S, self.settings.retention_s)
        lock = self.settings.keys.maintenance_lock("purge-images")
        if self.redis.set(lock, "1", nx=True, ex=every_s):
            removed = self.storage.purge_older_than(self.settings.retention_s)
            if removed:
                log.info("storage.purged", extra={"jobs": removed})

    def scan_running(self) -> None:
        """Settle running jobs whose worker's liveness key has been gone for two heartbeats."""
        entries = self.redis.hgetall(self.settings.keys.running)
        grace = 2 * self.settings.worker_heartbeat_s
        for raw_id, raw_owner in entries.items():
            job_id = _text(raw_id)
            if self._owner_alive(raw_owner):
                self.dead_since.pop(job_id, None)
                continue
            first = self.dead_since.setdefault(job_id, time.monotonic())
            if time.monotonic() - first >= grace:
                self.dead_since.pop(job_id, None)
                self._settle_from_rq(job_id)

    def _owner_alive(self, raw_owner: bytes | str) -> bool:
        try:
            owner = json.loads(raw_owner)
        except ValueError:
            return False
        raw = self.redis.get(self.settings.keys.worker(str(owner.get("worker"))))
        if raw is None:
            return False
        return json.loads(raw).get("incarnation") == owner.get("incarnation")

    def _settle_from_rq(self, job_id: str) -> None:
        cause = "stopped answering (its liveness key expired)"
        try:
            job = Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            settle_lost(self.store, job_id, retry=False, cause=cause)
            return
        status = job.get_status()
        queue = Queue(job.origin, connection=self.redis)
        if status == RqStatus.STARTED:
            if job_id in queue.started_job_registry:
                return  # its entry expires soon; RQ cleanup (path 1) settles it
            retry = bool(job.retries_left and job.retries_left > 0)
            settle_lost(self.store, job_id, retry=retry, cause=cause)
            with self.redis.pipeline() as pipeline:
                if retry:
                    job.retry(queue, pipeline)
                else:
                    record_job_failure(job, f"AbandonedJobError: worker {cause}", pipeline)
                pipeline.execute()
        elif status in (RqStatus.QUEUED, RqStatus.SCHEDULED, RqStatus.DEFERRED):
            settle_lost(self.store, job_id, retry=True, cause=cause)
        elif status == RqStatus.CANCELED:
            self.store.redis.hdel(self.settings.keys.running, job_id)
            self.store.mark_canceled(job_id)
        else:
            settle_lost(self.store, job_id, retry=False, cause=cause)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
