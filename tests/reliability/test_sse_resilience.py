"""The SSE stream rides out short Redis outages and ends with a clear comment after long ones,
instead of dying mid-response (regression: the `redis` client parameter shadowed the module, so
the retry branch itself raised AttributeError)."""

from __future__ import annotations

import asyncio

import pytest
from redis import exceptions as redis_exceptions
from redis.asyncio import Redis as AsyncRedis

from generative_service.api import sse
from generative_service.schemas import Event


async def _collect(stream) -> list[str]:
    return [frame async for frame in stream]


def _flaky_reader(failures: int, error: type[Exception]):
    calls = 0

    async def read_async(redis, prefix, job_id, *, after, block_ms=0, count=500):
        nonlocal calls
        calls += 1
        if calls <= failures:
            raise error("Redis went away")
        return [("1700000000000-0", Event(type="succeeded", job_id=job_id, job={"id": job_id}))]

    return read_async


@pytest.mark.parametrize("error", [redis_exceptions.ConnectionError, redis_exceptions.TimeoutError])
def test_stream_retries_through_a_short_outage(monkeypatch, settings, error):
    monkeypatch.setattr(sse.events, "read_async", _flaky_reader(3, error))
    frames = asyncio.run(
        _collect(
            sse.stream_job_events(
                AsyncRedis.from_url(settings.redis_url), settings, "job_x", after="0-0"
            )
        )
    )
    assert frames[-1].startswith("id: 1700000000000-0\nevent: succeeded\n")


def test_stream_ends_with_a_comment_when_redis_stays_away(monkeypatch, settings):
    monkeypatch.setattr(
        sse.events, "read_async", _flaky_reader(1000, redis_exceptions.ConnectionError)
    )
    frames = asyncio.run(
        _collect(
            sse.stream_job_events(
                AsyncRedis.from_url(settings.redis_url), settings, "job_x", after="0-0"
            )
        )
    )
    assert frames[-1] == ": redis unavailable; reconnect with Last-Event-ID to resume\n"
