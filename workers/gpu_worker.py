"""The GPU worker: `python -m workers.gpu_worker [--queues default,...] [--burst] [--worker-id ID]`.

One long-lived process per GPU. It loads the engine, the NSFW filter and the upscaler once and
keeps them, so it runs RQ in-process (a `SimpleWorker`; CUDA does not survive RQ's fork). RQ
dequeues one job; `GpuWorker.execute_job` fills a batch around it with compatible waiting jobs
(batch_filler.py), runs the batch (runner.py) and drives every job through RQ's own bookkeeping
(lifecycle.py). Threads beside the RQ loop: heartbeats and the watchdog (liveness.py), dead-worker
maintenance (recovery.py), progress publishing (progress.py).

Signals: the first SIGTERM/SIGINT finishes the running batch, then the worker exits; a second one
stops the batch at its next step and hands its jobs back to the front of their queue. Redis
going away is waited out with backoff (the models stay loaded); it never ends the process.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import socket
import sys
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from redis import Redis
from redis.exceptions import RedisError
from rq.exceptions import StopRequested
from rq.worker import SimpleWorker, WorkerStatus

from generative_service import logs, metrics
from generative_service.errors import GenerationFailed, ModelLoadError, NotFound
from generative_service.jobs import JobStore
from generative_service.redis_client import sync_redis, worker_redis
from generative_service.settings import Settings, get_settings
from generative_service.storage import get_storage
from workers import lifecycle
from workers.batch_filler import BatchFiller
from workers.boundary import Models
from workers.fairshare import REFRESH_S as FAIRSHARE_REFRESH_S
from workers.fairshare import TenantQueues, fair_queue_class
from workers.liveness import Heartbeat, Watchdog
from workers.progress import ProgressPublisher
from workers.recovery import Maintenance, settle_lost
from workers.runner import BatchRunner, BatchState

if TYPE_CHECKING:
    from redis.client import Pipeline
    from rq.job import Job
    from rq.queue import Queue

    from workers.runner import Slot

log = logs.get_logger(__name__)
EXIT_CONFIG = 78  # EX_CONFIG: a model setting is wrong; restarting will not help
EXIT_HUNG = 70  # EX_SOFTWARE: the watchdog ended a hung batch
RUNNING_BOUND_PAUSE_S = 0.05


def generate(job_id: str) -> None:
    """The RQ callable of generation jobs. GPU workers batch jobs instead of calling it.

    Raises:
        GenerationFailed: always; only `python -m workers.gpu_worker` can run generation jobs.
    """
    raise GenerationFailed(
        f"job {job_id}: generation jobs run only in the GPU worker (python -m workers.gpu_worker)"
    )


class GpuWorker(SimpleWorker):
    """An in-process RQ worker that runs the jobs it dequeues in batches."""

    def __init__(self, queues: Sequence[str], *, context: WorkerContext, **kwargs: Any) -> None:
        super().__init__(list(queues), **kwargs)
        self.context = context
        self.stop_requested = False
        self.dead = False
        self.tenants = TenantQueues(context.redis, context.store.queue, context.queues)
        self.filler = BatchFiller(
            context.store,
            context.settings,
            validate=context.models.engine.validate,
            should_stop=self._stopping,
            tenants=self.tenants,
        )
        self.runner = BatchRunner(
            self, store=context.store, storage=context.storage, models=context.models, settings=context.settings,
            worker_id=context.worker_id, state=context.state, abort=context.abort,
            publisher=context.publisher,
        )  # fmt: skip

    # --- fair share: every key's queue, served round robin (fairshare.py) ----------------------
    @property
    def _ordered_queues(self) -> list[Queue]:
        tenants = self.__dict__.get("tenants")
        if tenants is None:  # RQ's own __init__, before ours ran
            return self.__dict__.get("_rq_ordered", [])
        queues = tenants.ordered()
        self.queues = queues
        return queues

    @_ordered_queues.setter
    def _ordered_queues(self, value: list[Queue]) -> None:
        self.__dict__["_rq_ordered"] = value  # RQ sets it in __init__; ours come from TenantQueues

    def reorder_queues(self, reference_queue: Queue) -> None:
        self.tenants.served(reference_queue)

    @property
    def dequeue_timeout(self) -> int:
        # A new key's queue joins the blocking dequeue at the next refresh.
        return max(1, round(FAIRSHARE_REFRESH_S))

    def register_death(self) -> None:
        self.dead = True  # the heartbeat thread stops renewing this RQ worker's hash
        super().register_death()

    def _stopping(self) -> bool:
        return self.stop_requested or self.context.abort.is_set()

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        # NOTE: running jobs' started-registry entries live WORKER_DEAD_AFTER_S, not job timeout
        # + 60 s: the heartbeat thread renews them, so a dead worker's jobs are found quickly.
        return self.context.settings.worker_dead_after_s

    def heartbeat(self, timeout: int | None = None, pipeline: Pipeline | None = None) -> None:
        """RQ's heartbeat (three writes) in one round trip: it runs between a dequeued job and
        its start."""
        if pipeline is not None:
            super().heartbeat(timeout, pipeline)
            return
        with self.connection.pipeline(transaction=False) as pipe:
            super().heartbeat(timeout, pipe)
            pipe.execute()

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run `job` in a batch with compatible waiting jobs (RQ calls this per dequeued job)."""
        # BUSY from the start, so a SIGTERM during the batch window means "finish, then exit".
        # Only this process's copy (what RQ's stop request reads): starting the job writes the
        # state to Redis a moment later, and one write is one round trip less on the job's path.
        self._state = WorkerStatus.BUSY
        try:
            self._execute(job, queue)
        finally:
            self.set_state(WorkerStatus.IDLE)

    def _execute(self, job: Job, queue: Queue) -> None:
        store = self.context.store
        try:
            record = store.get(job.id, drive=True)
        except NotFound:
            execution = lifecycle.start(self, job)
            lifecycle.fail(
                self,
                job,
                queue,
                execution,
                GenerationFailed(f"job {job.id} has no record (expired or deleted)"),
            )
            return
        if record.status.is_terminal:  # canceled (or finished) before it reached a worker
            lifecycle.cancel(self, job, queue, None)
            return
        bound = self.context.settings.max_running_per_key
        if bound and store.queue.running_count(record.owner) >= bound:
            self._hand_back_unstarted(job, queue)
            return
        candidate = self.filler.check(record)
        if candidate.key is None:
            error = candidate.error or GenerationFailed(f"job {job.id} could not be checked")
            self.runner.fail_alone(job, queue, record, error)
            return
        delivery = self.runner.run(self.filler.fill(job, queue, record, candidate.key))
        if delivery is not None:
            self.filler.delivered(*delivery)

    def _hand_back_unstarted(self, job: Job, queue: Queue) -> None:
        """GENSVC_MAX_RUNNING_PER_KEY: the key has enough running; its job goes back to the front
        of its queue and the worker serves the other keys' queues first (round robin)."""
        pipe = self.connection.pipeline()
        pipe.lrem(queue.intermediate_queue_key, 0, job.id)
        pipe.lpush(queue.key, job.id)
        pipe.execute()
        time.sleep(RUNNING_BOUND_PAUSE_S)  # all keys at their bound: do not spin on Redis

    def run_maintenance_tasks(self) -> None:
        # The maintenance thread cleans registries on its own schedule and lock (recovery.py).
        from rq.utils import now

        # rq's BaseWorker assigns None in __init__ and declares no type, so mypy infers None.
        self.last_cleaned_at = now()  # type: ignore[assignment]

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: Any = None,
        exc_string: str = "",
        execution: Any = None,
    ) -> None:
        """RQ's failure handling, plus the job record for failures RQ finds on its own
        (a job stuck in the intermediate list after its worker died)."""
        retry = job.should_retry and self._stopped_job_id != job.id
        super().handle_job_failure(
            job,
            queue,
            started_job_registry=started_job_registry,
            exc_string=exc_string,
            execution=execution,
        )
        settle_lost(
            self.context.store, job.id, retry=retry, cause="died right after taking the job"
        )

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stop_requested = True
        log.info("worker.stopping", extra={"worker_id": self.context.worker_id, "signal": signum})
        super().request_stop(signum, frame)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        if self.get_state() == WorkerStatus.BUSY and not self.context.abort.is_set():
            # NOTE: never raise inside a CUDA call: the engine stops at its next step instead,
            # and the batch's jobs go back to the front of their queue.
            log.warning("worker.handing_back", extra={"worker_id": self.context.worker_id})
            self.context.abort.set()
            return
        super().request_force_stop(signum, frame)


class WorkerContext:
    """What outlives one RQ worker object: settings, Redis, models, batch state, threads."""

    def __init__(
        self, settings: Settings, *, worker_id: str, queues: list[str], models: Models, redis: Redis
    ) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.queues = queues
        self.models = models
        self.redis = redis
        self.store = JobStore(redis, settings)
        self.storage = get_storage(settings)
        self.state = BatchState()
        self.abort = threading.Event()
        self.publisher = ProgressPublisher()
        self.worker: GpuWorker | None = None
        # Background threads get their own client with short timeouts: a stuck socket must not
        # silence heartbeats.
        side = sync_redis(settings, socket_timeout=5, socket_connect_timeout=5)
        side_store = JobStore(side, settings)
        rq_queues = [settings.keys.rq_queue_name(name) for name in queues]
        self.heartbeat = Heartbeat(
            redis=side, settings=settings, worker_id=worker_id, queues=queues, state=self.state,
            get_worker=lambda: self.worker, describe=models.engine.describe,
            layers=models.engine.lora_layers,
        )  # fmt: skip
        # NOTE: when the heartbeat's connection dies, the main client's idle pooled connections
        # to the same server are presumed dead too: dropped now, instead of each one costing a
        # socket timeout (and perhaps a job) when next used. The in-use one times out by itself.
        self.heartbeat.on_lost = lambda: redis.connection_pool.disconnect(inuse_connections=False)
        self.maintenance = Maintenance(
            redis=side, store=side_store, queue_names=rq_queues, get_worker=lambda: self.worker
        )
        self.maintenance.before_cleanup = self.heartbeat.beat
        self.maintenance.served = lambda: [
            name for queue in queues for name in side_store.queue.served_queue_names(queue)
        ]
        self.maintenance.storage = self.storage
        self.watchdog = Watchdog(
            state=self.state, timeout_s=settings.job_timeout_s, on_hung=self.on_hung
        )

    def start_threads(self) -> None:
        for thread in (self.heartbeat, self.maintenance, self.watchdog):
            thread.start()

    def stop_threads(self) -> None:
        self.watchdog.stop()
        self.maintenance.stop()
        self.heartbeat.stop(remove=True)

    def on_hung(self, batch_id: str, slots: list[Slot]) -> None:
        """Watchdog: fail the hung batch's jobs with the reason, then end the process."""
        timeout = self.settings.job_timeout_s
        message = f"generation ran longer than GENSVC_JOB_TIMEOUT_S={timeout} s and was stopped; the worker restarts"
        worker = self.worker
        for slot in slots:
            if slot.outcome is not None:
                continue
            queue = slot.queue or self.state.queue
            try:
                self.store.mark_failed(slot.id, code="timeout", message=message)
                if worker is not None and queue is not None:
                    lifecycle.fail(
                        worker, slot.rq_job, queue, slot.execution, GenerationFailed(message)
                    )
                self.redis.hdel(self.settings.keys.running, slot.id)
            except Exception:  # noqa: BLE001 - exit regardless
                log.exception("watchdog.fail_job_failed", extra={"job_id": slot.id})
        self.heartbeat.stop(remove=True)
        log.error("worker.exit_hung", extra={"worker_id": self.worker_id, "batch_id": batch_id})
        logs_flush()
        os._exit(EXIT_HUNG)


def logs_flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001
            pass


def load_worker_models(settings: Settings, redis: Redis) -> Models:
    """Load the engine, the NSFW filter and the upscaler once (ModelLoadError names the setting)."""
    from generative_service.engine import Engine
    from generative_service.postprocess import SafetyFilter, Upscaler

    started = time.perf_counter()
    upscaler = Upscaler.from_settings(settings)
    if settings.upscaler_weights is not None:
        upscaler.load()  # configured weights: a broken file fails at start, naming the setting
    # Otherwise the bundled weights are converted (once, cached) on the first upscale request.
    models = Models(
        engine=Engine.from_settings(settings, redis=redis),
        safety=SafetyFilter.from_settings(settings),
        upscaler=upscaler,
    )
    log.info(
        "worker.models_loaded",
        extra={"model": settings.model, "seconds": round(time.perf_counter() - started, 2)},
    )
    return models


def wait_for_redis(redis: Redis, stop: threading.Event | None = None) -> None:
    """Block until Redis answers, backing off from 0.5 s to 10 s between tries."""
    delay = 0.5
    while True:
        try:
            redis.ping()
            return
        except RedisError as exc:
            log.warning("worker.redis_unavailable", extra={"error": repr(exc), "retry_in_s": delay})
        if stop is not None and stop.wait(delay):
            return
        if stop is None:
            time.sleep(delay)
        delay = min(delay * 2, 10.0)


def serve(context: WorkerContext, *, burst: bool = False) -> int:
    """Run RQ work loops until stopped (or, in burst mode, until the queues are empty)."""
    settings = context.settings
    rq_queues = [settings.keys.rq_queue_name(name) for name in context.queues]
    context.start_threads()
    try:
        while True:
            wait_for_redis(context.redis)
            worker = GpuWorker(
                rq_queues, context=context, connection=context.redis,
                # A fresh RQ name per incarnation: a restarted worker with the same --worker-id
                # must not collide with (or keep alive) the hash of the one that died.
                name=f"{context.worker_id}.{secrets.token_hex(3)}",
                worker_ttl=max(60, 2 * settings.worker_dead_after_s), log_job_description=False,
                queue_class=fair_queue_class([context.store.queue.bell_key(name) for name in context.queues]),
            )  # fmt: skip
            context.worker = worker
            try:
                worker.work(burst=burst, logging_level=settings.log_level)
            except RedisError as exc:
                log.warning("worker.redis_lost", extra={"error": repr(exc)})
            except StopRequested:  # a signal while idle between RQ work loops
                return 0
            if worker.stop_requested or context.abort.is_set():
                return 0
            if burst and _redis_up(context.redis):
                return 0
            log.warning("worker.restarting_loop", extra={"worker_id": context.worker_id})
            try:
                time.sleep(0.5)
                wait_for_redis(context.redis)
            except StopRequested:
                return 0
    finally:
        context.stop_threads()


def _redis_up(redis: Redis) -> bool:
    try:
        return bool(redis.ping())
    except RedisError:
        return False


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m workers.gpu_worker",
        description="GPU generation worker (loads the models once, batches jobs).",
    )
    parser.add_argument(
        "--queues",
        default=None,
        help="Comma-separated logical queues, in priority order (default: GENSVC_QUEUES).",
    )
    parser.add_argument("--burst", action="store_true", help="Exit when the queues are empty.")
    parser.add_argument("--worker-id", default=None, help="Stable worker id (default: HOST-PID).")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, *, settings: Settings | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = parse_args(argv)
    settings = settings or get_settings()
    logs.configure(settings, "gpu-worker")
    queues = [
        name.strip()
        for name in (args.queues.split(",") if args.queues else settings.queues)
        if name.strip()
    ]
    worker_id = args.worker_id or f"{socket.gethostname()}-{os.getpid()}"
    redis = worker_redis(settings)
    wait_for_redis(redis)
    try:
        models = load_worker_models(settings, redis)
    except ModelLoadError as exc:
        log.error("worker.model_load_failed", extra={"error": exc.message, "setting": exc.setting})
        return EXIT_CONFIG
    context = WorkerContext(
        settings, worker_id=worker_id, queues=queues, models=models, redis=redis
    )
    log.info("worker.ready", extra={"worker_id": worker_id, "queues": queues})
    metrics.serve_process_metrics(settings)  # only when GENSVC_WORKER_METRICS_PORT > 0
    code = serve(context, burst=args.burst)
    # NOTE: Python puts default handlers back while it tears down, and tearing down torch takes a
    # while: a supervisor's repeated SIGTERM then would turn a clean exit into "killed".
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(main())
