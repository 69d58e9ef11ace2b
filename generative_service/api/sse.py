"""Server-Sent Events for one job, read from its Redis Stream.

Each SSE event carries the stream id as `id:`, so a client that reconnects with `Last-Event-ID`
(or `?last_event_id=`) gets exactly what it missed. The stream closes after the terminal event;
for a job that already ended it replays everything and closes. While nothing happens, comment
lines keep proxies from closing the connection. A client that goes away cancels nothing.

Nothing but an event ends with the blank line that dispatches a frame: the opening `retry:` and the
keep-alive comments are single lines, so no client (httpx-sse reports a retry-only or, once it has
seen an id, a comment-only block as an event) surfaces an empty event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator

from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from generative_service import events
from generative_service.api.stream_hub import StreamHub
from generative_service.errors import InvalidRequest
from generative_service.record import JobRecord
from generative_service.schemas import Event
from generative_service.settings import Settings

ENDED_RECHECK_S = 0.2  # the record ended but its terminal event is not in the stream yet
REDIS_RETRIES = 5
RECONNECT_MS = 2000


def resume_point(header: str | None, query: str | None) -> str:
    """The stream id to resume after. The header wins: a browser's EventSource updates it on reconnect."""
    for name, value in (("Last-Event-ID", header), ("last_event_id", query)):
        if value:
            if not events.valid_event_id(value.strip()):
                raise InvalidRequest(
                    name,
                    f"must be an event id this stream sent (like 1700000000000-0), got {value!r}",
                )
            return value.strip()
    return "0-0"


def format_event(event_id: str, event: Event) -> str:
    """One SSE frame: `id`, `event` (the type) and one JSON `data` line."""
    return f"id: {event_id}\nevent: {event.type}\ndata: {json.dumps(event.to_payload(), separators=(',', ':'))}\n\n"


async def nothing_after(redis: AsyncRedis, settings: Settings, job_id: str, after: str) -> bool:
    """True when a client resuming after `after` already has the job's terminal event."""
    if after == "0-0":
        return False
    pending = await events.read_async(redis, settings.key_prefix, job_id, after=after)
    return not pending and await _job_ended(redis, settings, job_id)


async def _job_ended(redis: AsyncRedis, settings: Settings, job_id: str) -> bool:
    raw = await redis.get(settings.keys.job(job_id))
    if raw is None:
        return True  # expired while we streamed: nothing more will come
    return JobRecord.model_validate_json(raw).status.is_terminal


async def stream_job_events(
    redis: AsyncRedis, settings: Settings, job_id: str, *, after: str
) -> AsyncIterator[str]:
    """Yield SSE frames for `job_id` after stream id `after` until its terminal event.

    NOTE: an idle stream holds no Redis connection: it waits on the process's StreamHub and
    borrows a pooled connection only for a quick XRANGE when woken or at each keep-alive.
    """
    yield f"retry: {RECONNECT_MS}\n"  # a field of the first event's block, not a block of its own
    key = settings.keys.events(job_id)
    hub = StreamHub.for_client(redis)
    async with hub.watch(key, after) as wake:
        last_sent = time.monotonic()
        failures = 0
        ended_seen = False
        while True:
            wake.clear()  # before reading: an event appended after the read sets it again
            try:
                # What the hub just read, when it covers everything after `after`: the events
                # reach the client without another round trip.
                known = hub.entries_after(key, after)
                batch = (
                    events.decode(known)
                    if known is not None
                    else await events.read_async(redis, settings.key_prefix, job_id, after=after)
                )
                idle_and_ended = not batch and await _job_ended(redis, settings, job_id)
                failures = 0
            # NOTE: not `redis.exceptions...`: the `redis` parameter (the client) shadows the module.
            except (RedisConnectionError, RedisTimeoutError):
                failures += 1
                if failures > REDIS_RETRIES:
                    yield ": redis unavailable; reconnect with Last-Event-ID to resume\n"
                    return
                await asyncio.sleep(0.2 * failures)
                continue
            for event_id, event in batch:
                yield format_event(event_id, event)
                after = event_id
                last_sent = time.monotonic()
                if event.is_terminal:
                    return
            if idle_and_ended:
                # The record turns terminal a moment before its event is appended: read once more first.
                if ended_seen:
                    return
                ended_seen = True
            if time.monotonic() - last_sent >= settings.sse_keepalive_s:
                yield ": keep-alive\n"
                last_sent = time.monotonic()
            # NOTE: after a batch too: the hub wakes us for anything appended after this read, so
            # reading again at once (and then the record) cost two round trips per event for nothing.
            if len(batch) < events.READ_COUNT:
                wait_s = (
                    ENDED_RECHECK_S
                    if ended_seen
                    else settings.sse_keepalive_s - (time.monotonic() - last_sent)
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), timeout=max(0.01, wait_s))
