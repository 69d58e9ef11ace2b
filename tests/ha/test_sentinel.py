"""Redis Sentinel: every process finds the master through the sentinels and follows a failover."""

from __future__ import annotations

import pytest

from generative_service.redis_client import async_redis, confirm_replicated, sync_redis
from generative_service.settings import Settings

from .servers import MASTER_NAME


def sentinel_settings(make_settings, sentinel_set, **overrides) -> Settings:
    return make_settings(
        # Sentinel mode: the URL's host is never used, only its db number.
        redis_url="redis://unused-host:1/0",
        redis_sentinels=sentinel_set.addresses,
        redis_sentinel_master=MASTER_NAME,
        redis_min_replicas=1,
        **overrides,
    )


def test_sentinel_settings_refuse_bad_addresses(make_settings) -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        make_settings(redis_sentinels=["127.0.0.1"])


def test_clients_reach_the_master_through_sentinels(make_settings, sentinel_set) -> None:
    settings = sentinel_settings(make_settings, sentinel_set)
    client = sync_redis(settings, socket_timeout=5)
    client.set(f"{settings.key_prefix}:probe", "1")
    assert sentinel_set.master().client().get(f"{settings.key_prefix}:probe") == b"1"
    confirm_replicated(client, settings)  # two replicas: WAIT 1 succeeds

    import asyncio

    async def read() -> bytes:
        aclient = async_redis(settings, max_connections=4, socket_timeout=5)
        try:
            return await aclient.get(f"{settings.key_prefix}:probe")
        finally:
            await aclient.aclose()

    assert asyncio.run(read()) == b"1"


def test_service_runs_a_job_through_sentinel(make_settings, sentinel_set, start_service) -> None:
    settings = sentinel_settings(make_settings, sentinel_set)
    service = start_service(settings, workers=1)
    client = service.client()
    job = client.submit(prompt="a red circle", steps=2, seed=1)
    done = client.wait(job.id, timeout=120)
    assert done.status == "succeeded", done
    assert client.image(job.id, 0).startswith(b"\x89PNG")
    # The job lives on the master the sentinels name, and on its replicas.
    keys = sentinel_set.master().client().keys(f"{settings.key_prefix}:*")
    assert keys
    assert sentinel_set.nodes[1].client().exists(*keys[:1])
