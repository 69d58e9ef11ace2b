"""Helpers of the GPU worker tests: submit jobs and read back what a user would see (record,
events, stored images, RQ registries)."""

from __future__ import annotations

import io
import time

import numpy as np
from PIL import Image
from redis import Redis
from rq import Queue
from support import free_port, wait_for  # noqa: F401 - the worker tests import them from here

from generative_service import events
from generative_service.jobs import JobStore
from generative_service.record import JobRecord
from generative_service.schemas import Event, GenerationRequest
from generative_service.settings import Settings
from generative_service.storage import get_storage

TERMINAL_TIMEOUT_S = 180.0


class Jobs:
    """Submit jobs and read them back, on one Settings."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self.redis = redis
        self.settings = settings
        self.store = JobStore(redis, settings)
        self.storage = get_storage(settings)
        self.queue = Queue(self.settings.keys.rq_queue_name("default"), connection=redis)

    def submit(self, prompt: str = "a red house", **fields: object) -> str:
        fields.setdefault("steps", 4)
        fields.setdefault("seed", 1234)
        record, _ = self.store.create(GenerationRequest(prompt=prompt, **fields))
        return record.id

    def get(self, job_id: str) -> JobRecord:
        return self.store.get(job_id)

    def wait_terminal(
        self, job_ids: list[str], timeout: float = TERMINAL_TIMEOUT_S
    ) -> list[JobRecord]:
        wait_for(
            lambda: all(self.get(job_id).status.is_terminal for job_id in job_ids),
            timeout=timeout,
            what=f"jobs {job_ids} to end",
        )
        return [self.get(job_id) for job_id in job_ids]

    def events(self, job_id: str) -> list[Event]:
        return [event for _, event in events.read(self.redis, self.settings.key_prefix, job_id)]

    def event_types(self, job_id: str, *, progress: bool = False) -> list[str]:
        return [event.type for event in self.events(job_id) if progress or event.type != "progress"]

    def pixels(self, job_id: str, index: int = 0) -> np.ndarray:
        data, _ = self.storage.get(job_id, index)
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.int16)

    def registries(self) -> dict[str, set[str]]:
        """Job ids per RQ place (queued, started, finished, failed, canceled), once settled.

        The worker writes a job's final state (what clients see) a few ms before RQ's own
        bookkeeping; this waits until two reads 0.2 s apart agree.
        """
        previous = self._registries()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            time.sleep(0.2)
            current = self._registries()
            if current == previous:
                return current
            previous = current
        return previous

    def _registries(self) -> dict[str, set[str]]:
        queue = self.queue
        return {
            "queued": set(queue.get_job_ids()),
            "started": set(queue.started_job_registry.get_job_ids(cleanup=False)),
            "finished": set(queue.finished_job_registry.get_job_ids(cleanup=False)),
            "failed": set(queue.failed_job_registry.get_job_ids(cleanup=False)),
            "canceled": set(queue.canceled_job_registry.get_job_ids(cleanup=False)),
        }
