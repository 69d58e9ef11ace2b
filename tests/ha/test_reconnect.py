"""A worker whose Redis connection goes dead without closing (the master's machine vanished, a
half-open socket after a failover) notices within its socket timeout, connects again and keeps
serving: it once waited on such a connection forever (the first connection had no timeout)."""

from __future__ import annotations

import time

import pytest
from redis.connection import parse_url

from .blackhole import BlackholeProxy


@pytest.mark.slow  # a worker start and a 20 s socket timeout
def test_gpu_worker_reconnects_after_its_connections_go_dead(make_settings, start_service) -> None:
    settings = make_settings()
    redis = parse_url(settings.redis_url)
    proxy = BlackholeProxy((redis.get("host", "127.0.0.1"), int(redis.get("port", 6379))))
    try:
        through_proxy = settings.model_copy(
            update={"redis_url": f"redis://127.0.0.1:{proxy.port}/{redis.get('db', 0)}"}
        )
        worker = start_service(through_proxy, workers=1, gateway=False)
        gateway = start_service(settings, workers=0)
        client = gateway.client()
        first = client.wait(client.submit(prompt="a red circle", steps=2).id, timeout=180)
        assert first.status == "succeeded", worker.logs("worker-0")[-3000:]

        time.sleep(1.0)  # the worker is back in its blocking dequeue
        assert proxy.blackhole_open_connections() >= 2  # the main client and the heartbeat's
        job = client.submit(prompt="a blue square", steps=2)
        # A job that meets another dead pooled connection fails once and RQ retries it.
        done = client.wait(job.id, timeout=240)
        assert done.status == "succeeded", worker.logs("worker-0")[-3000:]
        assert worker.processes["worker-0"].poll() is None  # the same process, not a restart
    finally:
        proxy.close()
