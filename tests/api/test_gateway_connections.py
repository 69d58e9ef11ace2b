"""A gateway that stops gives back every Redis connection it opened (its warmed pool included)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from generative_service.api import create_app


def _connected(redis) -> int:
    return int(redis.info("clients")["connected_clients"])


def test_stopped_gateways_leave_no_redis_connections_behind(redis, make_settings):
    settings = make_settings(gateway_redis_connections=20)
    before = _connected(redis)
    for _ in range(5):
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
            assert _connected(redis) >= before + 20  # the pool was warmed at start
    # Before the fix each start/stop left its 20 warmed connections open: +100 here.
    assert _connected(redis) <= before + 3
