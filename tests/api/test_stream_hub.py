"""The gateway's StreamHub: one blocking reader wakes every waiting SSE client."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis as AsyncRedis

from generative_service.api import stream_hub


@pytest.fixture
def keys(redis):
    prefix = f"t_hub_{uuid.uuid4().hex[:8]}"
    made = [f"{prefix}:events:job_a", f"{prefix}:events:job_b"]
    yield made
    redis.delete(*made)
    for key in redis.scan_iter(f"{prefix}:hub:*"):
        redis.delete(key)


def test_a_stream_registered_while_the_hub_blocks_is_woken_without_waiting_out_the_block(
    redis, keys, monkeypatch
):
    # With a block this long, a hub that only picked up new streams between blocks would leave
    # the second client waiting ~60 s; the client must be woken as soon as its event exists.
    monkeypatch.setattr(stream_hub, "HUB_BLOCK_MS", 60_000)
    first, second = keys

    async def scenario() -> bool:
        client = AsyncRedis.from_url("redis://127.0.0.1:6379/0", socket_timeout=120)
        hub = stream_hub.StreamHub(client)
        try:
            async with hub.watch(first, "0-0"):
                await asyncio.sleep(0.3)  # the hub is now blocked in XREAD on `first` alone
                async with hub.watch(second, "0-0") as wake:
                    await client.xadd(second, {"data": "{}"})
                    await asyncio.wait_for(wake.wait(), timeout=20)
                    return wake.is_set()
        finally:
            if hub._task:
                hub._task.cancel()
            await client.aclose()

    assert asyncio.run(scenario())


def test_a_woken_client_takes_its_events_from_the_hubs_read_and_one_behind_it_reads_them(
    redis, keys
):
    """The hub's XREAD already holds the new entries: a client it woke takes them from there
    (one Redis round trip less per event delivered); a client whose position the read does not
    cover gets None and reads the stream itself, so nothing is skipped."""
    first, _ = keys

    async def scenario() -> tuple:
        client = AsyncRedis.from_url("redis://127.0.0.1:6379/0", socket_timeout=30)
        hub = stream_hub.StreamHub(client)
        try:
            early = await client.xadd(first, {"data": "e0"})
            async with hub.watch(first, early.decode()) as wake:
                ids = [(await client.xadd(first, {"data": f"e{k}"})).decode() for k in (1, 2)]
                await asyncio.wait_for(wake.wait(), timeout=20)
                while hub._positions.get(first) != ids[-1]:  # both entries read by the hub
                    await asyncio.sleep(0.01)
                return (
                    early.decode(),
                    ids,
                    hub.entries_after(first, early.decode()),
                    hub.entries_after(first, ids[0]),
                    hub.entries_after(first, ids[1]),  # nothing past it was read
                    hub.entries_after(first, "0-0"),  # before the read's start: read yourself
                )
        finally:
            if hub._task:
                hub._task.cancel()
            await client.aclose()

    early, ids, from_start, from_first, from_last, from_zero = asyncio.run(scenario())

    def names(entries):
        return [(entry_id.decode(), fields[b"data"].decode()) for entry_id, fields in entries]

    # The hub may have read the two entries in one XREAD or in two.
    assert names(from_first) == [(ids[1], "e2")]
    assert from_start is None or names(from_start) == [(ids[0], "e1"), (ids[1], "e2")]
    assert from_last is None and from_zero is None
