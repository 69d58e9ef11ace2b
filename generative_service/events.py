"""Per-job event streams in Redis Streams.

`publish` appends with XADD (bounded with MAXLEN ~) and keeps the stream alive as long as the job;
`read` returns the events after a given stream id, optionally blocking. Stream ids are the SSE
`id:` values, so `Last-Event-ID` resumes exactly after the last event a client saw.
NOTE: never read with `$`: a client that reconnects must get what it missed.
"""

from __future__ import annotations

import json
from typing import cast

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.typing import StreamRangeResponse, XReadResponse

from generative_service.keys import Keys
from generative_service.redis_client import reply_text
from generative_service.schemas import Event

STREAM_MAXLEN = 2000


def publish(redis: Redis, prefix: str, event: Event, *, ttl_s: int) -> str:
    """Append `event` to its job's stream and return the stream id."""
    pipe = redis.pipeline(transaction=True)
    append(pipe, prefix, event, ttl_s=ttl_s)
    event_id, _ = pipe.execute()
    return reply_text(event_id)


def append(pipe: Pipeline, prefix: str, event: Event, *, ttl_s: int) -> None:
    """Queue `publish`'s two commands (XADD, EXPIRE) on `pipe`, e.g. inside the transaction that
    stores the record the event reports, so record and event become visible together."""
    key = Keys(prefix).events(event.job_id)
    pipe.xadd(key, {"data": encode(event)}, maxlen=STREAM_MAXLEN, approximate=True)
    pipe.expire(key, ttl_s)


def encode(event: Event) -> str:
    """The `data` field of an event's stream entry (what readers decode)."""
    return json.dumps(event.to_payload())


def xread_streams(reply: XReadResponse | None) -> list[tuple[str, StreamRangeResponse]]:
    """XREAD's reply as (stream key, entries) pairs.

    NOTE: our clients speak RESP2, whose reply is a list of [key, entries] pairs; redis-py types
    it as a union with RESP3's dict forms.
    """
    if not reply:
        return []
    pairs = cast("list[tuple[bytes | str, StreamRangeResponse]]", reply)
    return [(reply_text(key), entries) for key, entries in pairs]


def decode(entries: StreamRangeResponse | None) -> list[tuple[str, Event]]:
    """Stream entries (XRANGE's or XREAD's) as (event id, Event) pairs; trimmed ones dropped."""
    out = []
    for event_id, fields in entries or []:
        if event_id is None or fields is None:  # a trimmed entry: nothing left to decode
            continue
        raw = fields.get(b"data", fields.get("data"))
        if raw is None:
            continue
        out.append((reply_text(event_id), Event.model_validate_json(raw)))
    return out


def read(
    redis: Redis, prefix: str, job_id: str, *, after: str = "0-0", count: int = 500
) -> list[tuple[str, Event]]:
    """Events after stream id `after` (exclusive), oldest first, without blocking."""
    return decode(
        redis.xrange(
            Keys(prefix).events(job_id), min=f"({after}" if after != "0-0" else "-", count=count
        )
    )


READ_COUNT = 500  # events per read; a full batch means more may be waiting


async def read_async(
    redis: AsyncRedis,
    prefix: str,
    job_id: str,
    *,
    after: str = "0-0",
    block_ms: int = 0,
    count: int = READ_COUNT,
) -> list[tuple[str, Event]]:
    """Events after stream id `after`; waits up to `block_ms` for new ones when there are none."""
    key = Keys(prefix).events(job_id)
    if block_ms <= 0:
        return decode(
            await redis.xrange(key, min=f"({after}" if after != "0-0" else "-", count=count)
        )
    streams = xread_streams(await redis.xread({key: after}, count=count, block=block_ms))
    return decode(streams[0][1]) if streams else []


def valid_event_id(value: str) -> bool:
    """True when `value` is a Redis stream id (`ms-seq`, each part an ASCII integer below 2**64)."""
    ms, _, seq = value.partition("-")
    # NOTE: str.isdigit() also accepts non-ASCII digits, and Redis rejects parts >= 2**64:
    # either would reach XREAD and break the stream mid-response.
    return all(
        part.isascii() and part.isdigit() and len(part) <= 20 and int(part) < 2**64
        for part in (ms, seq)
    )
