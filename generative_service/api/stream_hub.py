"""One Redis reader per gateway process for every client waiting on job events (SSE, Prefer: wait).

Idle clients must not each hold a Redis connection: the bounded async pool would run dry, and
redis-py's BlockingConnectionPool is not fair (a task that releases a connection can take it
straight back), so with more waiting SSE streams than pooled connections some streams got
nothing, not even keep-alives, for minutes. Instead one hub task per event loop runs
`XREAD BLOCK` over the stream keys of every waiting client and wakes the clients whose stream
grew; each client then takes its new events from what the hub read, or, when that read does
not cover them all (the client is behind it), reads them with a quick, non-blocking XRANGE.

Nothing can be missed: a client clears its wake-up flag before it reads, and the hub wakes it
for any entry after the position the client registered with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
import weakref
from collections.abc import AsyncIterator

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from redis.typing import KeyT, StreamIdT, StreamRangeResponse

from generative_service.events import xread_streams
from generative_service.keys import Keys, Ttl
from generative_service.redis_client import reply_text

log = logging.getLogger("generative_service.api.stream_hub")

HUB_BLOCK_MS = 1000
WAKE_TTL_S = Ttl.HUB_WAKE_S
HUB_COUNT = 200
RETRY_S = 0.5
_hubs: weakref.WeakKeyDictionary[AsyncRedis, StreamHub] = weakref.WeakKeyDictionary()


def _order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class StreamHub:
    """Wakes waiting clients when their event streams grow, through one blocking reader."""

    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._positions: dict[str, str] = {}
        # Per stream, the last XREAD's: the position it read after and the entries it got.
        self._read: dict[str, tuple[str, StreamRangeResponse]] = {}
        self._task: asyncio.Task | None = None
        # A stream registered while the hub blocks in XREAD on the others would wait out the
        # block; the hub also reads this private stream, and a new registration writes to it.
        self._wake_key: str | None = None
        self._wake_pos = "0-0"
        self._blocking = False

    @classmethod
    def for_client(cls, redis: AsyncRedis) -> StreamHub:
        """The hub of this async Redis client (one per client, hence one per event loop)."""
        hub = _hubs.get(redis)
        if hub is None:
            hub = _hubs[redis] = cls(redis)
        return hub

    @contextlib.asynccontextmanager
    async def watch(self, key: str, after: str) -> AsyncIterator[asyncio.Event]:
        """Register interest in stream `key` past id `after`; yields the flag the hub sets."""
        wake = asyncio.Event()
        self._waiters.setdefault(key, set()).add(wake)
        position = self._positions.get(key)
        if position is None or _order(after) < _order(position):
            self._positions[key] = after
        if self._wake_key is None:
            self._wake_key = Keys.of_events_key(key).hub_wake(uuid.uuid4().hex)
        if self._task is None or self._task.done():  # done: it died; clients still poll meanwhile
            self._task = asyncio.get_running_loop().create_task(
                self._run(self._wake_key), name="stream-hub"
            )
        elif position is None and self._blocking:
            await self._nudge(self._wake_key)
        try:
            yield wake
        finally:
            waiters = self._waiters.get(key)
            if waiters is not None:
                waiters.discard(wake)
                if not waiters:
                    del self._waiters[key]
                    self._positions.pop(key, None)
                    self._read.pop(key, None)

    def entries_after(self, key: str, after: str) -> StreamRangeResponse | None:
        """The entries of stream `key` after id `after`, from the hub's last read of it, when that
        read covered them (it started at or before `after` and got entries past it); else None
        (read them from Redis). Later entries wake the client again, as ever."""
        read = self._read.get(key)
        if read is None or not read[1]:
            return None
        start, entries = read
        position, last = _order(after), entries[-1][0]
        if last is None or position < _order(start) or position >= _order(reply_text(last)):
            return None
        return [
            entry
            for entry in entries
            if entry[0] is not None and _order(reply_text(entry[0])) > position
        ]

    async def _nudge(self, wake_key: str) -> None:
        """Make the blocked XREAD return so the next one includes the new stream."""
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(wake_key, {"w": "1"}, maxlen=16, approximate=True)
                pipe.expire(wake_key, WAKE_TTL_S)
                await pipe.execute()
        except RedisError as exc:  # the new stream is then read after the current block ends
            log.warning("stream_hub.nudge_failed", extra={"error": repr(exc)})

    @property
    def watching(self) -> int:
        """Clients waiting now (for tests and metrics)."""
        return sum(len(waiters) for waiters in self._waiters.values())

    async def _run(self, wake_key: str) -> None:
        while True:
            if not self._waiters:
                self._task = (
                    None  # NOTE: no await between this check and here: no registration lost
                )
                return
            streams: dict[KeyT, StreamIdT] = {key: pos for key, pos in self._positions.items()}
            streams[wake_key] = self._wake_pos
            try:
                self._blocking = True
                result = await self.redis.xread(streams, count=HUB_COUNT, block=HUB_BLOCK_MS)
            except RedisError as exc:
                # Clients keep polling on their own keep-alive timer meanwhile; nothing is lost.
                log.warning("stream_hub.redis_error", extra={"error": repr(exc)})
                await asyncio.sleep(RETRY_S)
                continue
            finally:
                self._blocking = False
            for key, entries in xread_streams(result):
                last = entries[-1][0] if entries else None
                if key == wake_key:
                    if last is not None:
                        self._wake_pos = reply_text(last)
                    continue
                if key in self._positions and last is not None:
                    self._read[key] = (str(streams[key]), entries)
                    self._positions[key] = reply_text(last)
                for wake in self._waiters.get(key, ()):
                    wake.set()
