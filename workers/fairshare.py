"""Fair share between API keys: the RQ queues a worker serves and the order it serves them in.

Each API key's jobs wait in their own RQ queue per logical queue (`JobQueue.tenant_queue_name`),
so one key's backlog never sits in front of another key's job. The worker serves those queues
with RQ's own round-robin dequeue: after a job from key A's queue it tries the other keys'
queues before A's again. Logical queues keep their priority order (`--queues default,large`:
every `default` queue before any `large` one); round robin rotates only within one logical queue.

New keys' queues show up in the submit script's per-queue set; the worker reads the set again
whenever its size changed (one SCARD per logical queue when it orders the queues) and at least
every REFRESH_S; its blocking dequeue waits at most that long on the doorbell between looks.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from rq.exceptions import DequeueTimeout
from rq.queue import Queue
from rq.utils import as_text

if TYPE_CHECKING:
    from redis import Redis

    from generative_service.queue import JobQueue

REFRESH_S = 1.0

# Take the head of the first non-empty queue into that queue's RQ intermediate list, as RQ's
# single-queue dequeue does (LMOVE), so a worker that dies right after taking a job leaves it
# where RQ's intermediate-queue cleanup finds it. KEYS: queue, intermediate, queue, intermediate...
# Returns {queue key, job id} or nil.
_TAKE_FIRST = """
for i = 1, #KEYS, 2 do
  local job_id = redis.call('LMOVE', KEYS[i], KEYS[i + 1], 'LEFT', 'RIGHT')
  if job_id then return {KEYS[i], job_id} end
end
return nil
"""


def fair_queue_class(bell_keys: list[str]) -> type[Queue]:
    """An RQ Queue class whose `dequeue_any` serves several queues, each the way RQ serves one.

    RQ pops from several queues with BLPOP, which keeps no intermediate entry; this takes the
    first waiting job in order with one script and, when none waits, sleeps on the submit
    script's doorbell lists (`bell_keys`) for at most REFRESH_S before looking again.
    """

    class FairQueue(Queue):
        @classmethod
        def dequeue_any(cls, queues, timeout, connection, job_class=None, serializer=None,
                        death_penalty_class=None):  # fmt: skip
            queues = list(queues)
            if len(queues) <= 1:
                return super().dequeue_any(queues, timeout, connection, job_class=job_class,
                                           serializer=serializer, death_penalty_class=death_penalty_class)  # fmt: skip
            take = connection.register_script(_TAKE_FIRST)
            keys = [key for queue in queues for key in (queue.key, queue.intermediate_queue_key)]
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                result = take(keys=keys)
                if result is not None:
                    queue_key, job_id = map(as_text, result)
                    fetched = cls._fetch_dequeued_job(
                        connection, queue_key, job_id, job_class=job_class, serializer=serializer,
                        death_penalty_class=death_penalty_class,
                    )  # fmt: skip
                    if fetched is None:
                        continue
                    return fetched
                if deadline is None:
                    return None
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise DequeueTimeout(timeout, [queue.key for queue in queues])
                connection.blpop(bell_keys, timeout=max(0.01, min(remaining, REFRESH_S)))

    return FairQueue


class TenantQueues:
    """The RQ queues of the logical `queues` (priority order), rotated per logical queue."""

    def __init__(self, redis: Redis, job_queue: JobQueue, queues: list[str]) -> None:
        self.redis = redis
        self.job_queue = job_queue
        self.logical = list(queues)
        self._groups: dict[str, list[Queue]] = {name: [] for name in self.logical}
        self._objects: dict[str, Queue] = {}
        self._refreshed = 0.0
        self._sizes: list[int] = []

    def _queue(self, name: str) -> Queue:
        if name not in self._objects:
            self._objects[name] = Queue(name, connection=self.redis)
        return self._objects[name]

    def _set_sizes(self) -> list[int]:
        pipe = self.redis.pipeline(transaction=False)
        for logical in self.logical:
            pipe.scard(self.job_queue.tenants_key(logical))
        return [int(size) for size in pipe.execute()]

    def refresh(self, *, force: bool = False) -> None:
        # NOTE: a new key's queue joins at once: one SCARD per logical queue tells whether the
        # sets grew. With only the REFRESH_S timer, a new key's first job waited up to a second
        # while fast batches of another key's ran (8 of them on a quiet CPU in the fair-share test).
        sizes = self._set_sizes()
        if not force and sizes == self._sizes and time.monotonic() - self._refreshed < REFRESH_S:
            return
        self._sizes = sizes
        self._refreshed = time.monotonic()
        for logical in self.logical:
            names = self.job_queue.served_queue_names(logical)
            current = [queue for queue in self._groups[logical] if queue.name in names]
            known = {queue.name for queue in current}
            self._groups[logical] = current + [self._queue(n) for n in names if n not in known]

    def ordered(self) -> list[Queue]:
        """Every queue, logical queues in priority order, each group in its rotation."""
        self.refresh()
        return [queue for logical in self.logical for queue in self._groups[logical]]

    def group_of(self, queue_name: str) -> list[Queue]:
        """The RQ queues of the logical queue that `queue_name` belongs to, in rotation order."""
        self.refresh()
        for group in self._groups.values():
            if any(queue.name == queue_name for queue in group):
                return list(group)
        return [self._queue(queue_name)]

    def served(self, queue: Queue) -> None:
        """Round robin: the queue a job was just taken from goes to the back of its group."""
        for logical, group in self._groups.items():
            names = [item.name for item in group]
            if queue.name in names:
                at = names.index(queue.name)
                self._groups[logical] = group[at + 1 :] + group[: at + 1]
                return
