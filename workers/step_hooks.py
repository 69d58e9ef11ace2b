"""What a running batch does between denoising steps, apart from progress: the step timer and the
cancel poller (which reads Redis on its own thread), plus the outcome a job leaves its batch with.
No torch here.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Sequence

from redis import Redis
from redis.exceptions import RedisError

from generative_service.keys import Keys

# The longest a cancel flag that came without its bell (set by hand, or the bell lost with a
# failed-over master) waits to be read; a cancel through JobStore.cancel rings at once.
CANCEL_WAIT_S = 1.0
CANCEL_RETRY_S = 0.1  # between tries while Redis is away


class Outcome(enum.StrEnum):
    """How a job left its batch (the log event is `job.{outcome}`)."""

    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"
    handed_back = "handed_back"  # the worker stopped; the job went back to the front of its queue


class StepTimer:
    """Times the denoising steps of one job of the batch (every job steps together).

    The first interval also holds prompt encoding, so it is not a step time.
    """

    def __init__(self) -> None:
        self.last = time.perf_counter()
        self.steps_s: list[float] = []

    def tick(self, step: int) -> float | None:
        """Mark step `step` done; its duration in ms, or None for the first interval."""
        now = time.perf_counter()
        step_ms = (now - self.last) * 1000.0
        self.last = now
        if step <= 1:
            return None
        self.steps_s.append(step_ms / 1000.0)
        return step_ms


class CancelPoller:
    """Answers "is this job canceled?" at every step without a Redis round trip in the denoising
    loop: while it is open (`with`), a background thread blocks on the batch's cancel bells
    (JobStore.cancel pushes one with each flag) and reads the flags with one MGET when one rings,
    and every CANCEL_WAIT_S in case a flag came without its bell; the loop only looks at what it
    read. A cancel is seen within a Redis round trip plus one step; `on_cancel` runs once per job,
    on the thread that asked, the first time it sees the flag. A set `abort` cancels every job
    (the worker is stopping).

    NOTE: blocking instead of polling: a thread that read the flags every 25 ms took the GIL 40
    times a second from the denoising loop and sent Redis 40 MGETs a second per busy worker.
    """

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        job_ids: Sequence[str],
        *,
        aborted: Callable[[], bool],
        on_cancel: Callable[[str], None],
    ) -> None:
        self.redis = redis
        self.job_ids = list(job_ids)
        self.cancel_keys = [keys.cancel(job_id) for job_id in self.job_ids]
        self.bell_keys = [keys.cancel_bell(job_id) for job_id in self.job_ids]
        self.aborted = aborted
        self.on_cancel = on_cancel
        self.canceled: set[str] = set()
        self._flagged: frozenset[str] = frozenset()  # replaced whole by the waiting thread
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cancel-poller", daemon=True)

    def __enter__(self) -> CancelPoller:
        self._poll()  # a job canceled while the batch formed is seen at the first step
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        # NOTE: no join: the thread may be blocked on the bells for up to CANCEL_WAIT_S, and what
        # it reads after this is looked at by no one; it ends when that wait returns.
        self._stop.set()

    def __call__(self, job_id: str) -> bool:
        if self.aborted():
            return True
        if job_id in self._flagged and job_id not in self.canceled:
            self.canceled.add(job_id)
            self.on_cancel(job_id)
        return job_id in self.canceled

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.redis.blpop(self.bell_keys, timeout=CANCEL_WAIT_S)
            except RedisError:
                self._stop.wait(CANCEL_RETRY_S)
                continue
            if not self._stop.is_set():
                self._poll()

    def _poll(self) -> None:
        try:
            flags = self.redis.mget(self.cancel_keys)
        except RedisError:
            return
        self._flagged = frozenset(
            job_id for job_id, flag in zip(self.job_ids, flags, strict=False) if flag is not None
        )
