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
