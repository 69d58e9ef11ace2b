"""Liveness of an in-process GPU worker: heartbeats while a batch runs, and a watchdog.

RQ's in-process worker sends no heartbeat while a job runs (its started-registry entry would
live job timeout + 60 s). Here a thread beats every GENSVC_WORKER_HEARTBEAT_S, whatever the main
thread is doing (CUDA calls release the GIL):
  - RQ's worker hash, and every running execution's started-registry entry, with a TTL of
    WORKER_DEAD_AFTER_S: if this process dies they expire and other workers' maintenance
    retries or fails the jobs (see recovery.py);
  - `P:worker:{id}` (JSON: queues, pid, host, incarnation, current batch), TTL WORKER_DEAD_AFTER_S,
    which /readyz and the workers gauge read;
  - `P:models`: `Engine.describe()`, which GET /v1/models serves;
  - `P:models:layers`: the layer shapes LoRA uploads are checked against (written when missing).
The watchdog ends a batch that runs longer than GENSVC_JOB_TIMEOUT_S. A hung CUDA call cannot be
interrupted, so it fails the batch's jobs with a reason and exits the process; the supervisor
(`gensvc up`, compose `restart:`) starts a fresh one.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from redis.exceptions import RedisError
from rq import worker_registration

from generative_service.keys import Ttl
from generative_service.logs import get_logger
from generative_service.schemas import utcnow

if TYPE_CHECKING:
    from redis import Redis

    from generative_service.settings import Settings
    from workers.runner import BatchState, Slot

log = get_logger(__name__)


class Heartbeat(threading.Thread):
    """Keeps this worker, its running jobs and its model description visible in Redis."""

    def __init__(
        self,
        *,
        redis: Redis,
        settings: Settings,
        worker_id: str,
        queues: list[str],
        state: BatchState,
        get_worker: Callable,
        describe: Callable[[], dict],
        layers: dict | None = None,
    ) -> None:
        super().__init__(name="heartbeat", daemon=True)
        self.redis = redis
        self.settings = settings
        self.worker_id = worker_id
        self.queues = queues
        self.state = state
        self.get_worker = get_worker
        self.describe = describe
        self.layers_json = json.dumps(layers, separators=(",", ":")) if layers else None
        self.started_at = utcnow().isoformat()
        self.stopped = threading.Event()
        self._failing = False
        self.on_lost: Callable[[], None] | None = None  # called once when an outage begins

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.beat()
                if self._failing:
                    log.info("heartbeat.recovered", extra={"worker_id": self.worker_id})
                self._failing = False
            except RedisError as exc:
                if not self._failing:  # log once per outage, not every beat
                    log.warning(
                        "heartbeat.redis_error",
                        extra={"worker_id": self.worker_id, "error": repr(exc)},
                    )
                    if self.on_lost is not None:
                        self.on_lost()
                self._failing = True
            self.stopped.wait(self.settings.worker_heartbeat_s)

    def stop(self, *, remove: bool = True) -> None:
        """Stop beating; with `remove`, delete the liveness key (a clean exit is not a death)."""
        self.stopped.set()
        if remove:
            try:
                self.redis.delete(self.settings.keys.worker(self.worker_id))
            except RedisError:
                pass

    def info(self) -> dict:
        """The liveness record: who this worker is and what it runs now."""
        worker = self.get_worker()
        batch_id, started, slots = self.state.snapshot()
        batch = None
        if batch_id is not None:
            batch = {
                "id": batch_id,
                "jobs": [slot.id for slot in slots],
                "running_s": round(time.monotonic() - (started or 0), 1),
            }
        return {
            "worker_id": self.worker_id,
            "incarnation": worker.name if worker is not None else None,
            "queues": self.queues,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.started_at,
            "heartbeat_at": utcnow().isoformat(),
            "batch": batch,
        }

    def beat(self) -> None:
        """One heartbeat, in one round trip."""
        worker = self.get_worker()
        if worker is not None and getattr(worker, "dead", False):
            worker = None  # between RQ work loops: only the liveness key is renewed
        ttl = Ttl.worker(self.settings)
        _, _, slots = self.state.snapshot()
        try:
            models = json.dumps(self.describe(), default=str)
        except Exception as exc:  # noqa: BLE001 - a describe() bug must not stop heartbeats
            log.warning("heartbeat.describe_failed", extra={"error": repr(exc)})
            models = None
        with self.redis.pipeline(transaction=False) as pipeline:
            if worker is not None:
                worker.heartbeat(pipeline=pipeline)  # first command: HSET, 1 if the hash was gone
                for slot in _running(slots):
                    slot.execution.heartbeat(
                        slot.rq_job.started_job_registry, ttl, pipeline=pipeline
                    )
            pipeline.set(self.settings.keys.worker(self.worker_id), json.dumps(self.info()), ex=ttl)
            if models is not None:
                pipeline.set(self.settings.keys.models, models)
            if self.layers_json is not None:
                pipeline.exists(self.settings.keys.model_layers)
            results = pipeline.execute()
        if self.layers_json is not None and results and not results[-1]:
            # Large (SDXL: ~2000 layers), so written only when missing (first beat, Redis restart).
            self.redis.set(self.settings.keys.model_layers, self.layers_json)
        if worker is not None and results and results[0] == 1:
            self._register_again(worker)

    def _register_again(self, worker: Any) -> None:
        """RQ's worker hash was gone (Redis restarted without persistence): write it again, so
        RQ's tools and registries see this worker."""
        with self.redis.pipeline(transaction=False) as pipeline:
            pipeline.hset(worker.key, mapping=worker.serialize())
            pipeline.expire(worker.key, worker.worker_ttl + 60)
            worker_registration.register(worker, pipeline)
            pipeline.execute()
        log.info("heartbeat.reregistered", extra={"worker_id": self.worker_id})


def _running(slots: list[Slot]) -> list[Slot]:
    return [slot for slot in slots if slot.execution is not None and slot.outcome is None]


class Watchdog(threading.Thread):
    """Calls `on_hung(batch_id, slots)` once when a batch runs past JOB_TIMEOUT_S."""

    def __init__(
        self, *, state: BatchState, timeout_s: float, on_hung: Callable[[str, list[Slot]], None]
    ) -> None:
        super().__init__(name="watchdog", daemon=True)
        self.state = state
        self.timeout_s = timeout_s
        self.on_hung = on_hung
        self.stopped = threading.Event()

    def run(self) -> None:
        poll_s = min(1.0, self.timeout_s / 4)
        while not self.stopped.wait(poll_s):
            batch_id, started, slots = self.state.snapshot()
            if (
                batch_id is not None
                and started is not None
                and time.monotonic() - started > self.timeout_s
            ):
                log.error(
                    "watchdog.batch_hung",
                    extra={
                        "batch_id": batch_id,
                        "jobs": [slot.id for slot in slots],
                        "timeout_s": self.timeout_s,
                    },
                )
                self.on_hung(batch_id, slots)
                return

    def stop(self) -> None:
        self.stopped.set()
