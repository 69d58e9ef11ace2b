"""Per-job event streams in Redis Streams.

`publish` appends with XADD (bounded with MAXLEN ~) and keeps the stream alive as long as the job;
`read` returns the events after a given stream id, optionally blocking. Stream ids are the SSE
`id:` values, so `Last-Event-ID` resumes exactly after the last event a client saw.
NOTE: never read with `$`: a client that reconnects must get what it missed.
"""

from __future__ import annotations

import json

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from generative_service.keys import Keys
from generative_service.schemas import Event

STREAM_MAXLEN = 2000


def publish(redis: Redis, prefix: str, event: Event, *, ttl_s: int) -> str:
    """Append `event` to its job's stream and return the stream id."""
    key = Keys(prefix).events(event.job_id)
    pipe = redis.pipeline(transaction=True)
    pipe.xadd(key, {"data": json.dumps(event.to_payload())}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, ttl_s)
    event_id, _ = pipe.execute()
    return event_id.decode() if isinstance(event_id, bytes) else event_id


def _decode(entries: list) -> list[tuple[str, Event]]:
    out = []
    for event_id, fields in entries:
        event_id = event_id.decode() if isinstance(event_id, bytes) else event_id
        raw = fields.get(b"data", fields.get("data"))
        out.append((event_id, Event.model_validate_json(raw)))
    return out


def read(
    redis: Redis, prefix: str, job_id: str, *, after: str = "0-0", count: int = 500
) -> list[tuple[str, Event]]:
    """Events after stream id `after` (exclusive), oldest first, without blocking."""
    return _decode(
        redis.xrange(
            Keys(prefix).events(job_id), min=f"({after}" if after != "0-0" else "-", count=count
        )
    )


async def read_async(
    redis: AsyncRedis,
    prefix: str,
    job_id: str,
    *,
    after: str = "0-0",
    block_ms: int = 0,
    count: int = 500,
) -> list[tuple[str, Event]]:
    """Events after stream id `after`; waits up to `block_ms` for new ones when there are none."""
    key = Keys(prefix).events(job_id)
    if block_ms <= 0:
        return _decode(
            await redis.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        )
    result = await redis.xread({key: after}, count=count, block=block_ms)
    if not result:
        return []
    return _decode(result[0][1])


def valid_event_id(value: str) -> bool:
    """True when `value` is a Redis stream id (`ms-seq`, each part an ASCII integer below 2**64)."""
    ms, _, seq = value.partition("-")
    # NOTE: str.isdigit() also accepts non-ASCII digits, and Redis rejects parts >= 2**64:
    # either would reach XREAD and break the stream mid-response.
    return all(
        part.isascii() and part.isdigit() and len(part) <= 20 and int(part) < 2**64
        for part in (ms, seq)
    )
