"""Fixtures of the multi-machine tests: a Redis Sentinel set and an S3-protocol server, both real
processes the test starts on free ports (never the shared Redis on 6379)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from .servers import S3Server, SentinelSet, sentinel_binary


@pytest.fixture
def sentinel_set(tmp_path: Path) -> Iterator[SentinelSet]:
    """A Redis master, two replicas and three sentinels of this test's own."""
    if sentinel_binary() is None:
        pytest.skip("redis-server/redis-sentinel not installed (make test-deps)")
    servers = SentinelSet(tmp_path / "redis")
    try:
        yield servers.start()
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server, shared by the session (each test uses its own bucket)."""
    pytest.importorskip("moto.server", reason="moto[server] is a test dependency")
    server = S3Server(tmp_path_factory.mktemp("moto"))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def make_s3_settings(make_settings, s3_server, monkeypatch: pytest.MonkeyPatch):
    """Factory of Settings on a fresh bucket of the moto server (AWS_* set in the environment)."""
    import boto3

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)

    def factory(**overrides):
        bucket = f"gensvc-{secrets.token_hex(6)}"
        boto3.client("s3", endpoint_url=s3_server.endpoint_url).create_bucket(Bucket=bucket)
        values = {"storage_url": f"s3://{bucket}/svc", "s3_endpoint_url": s3_server.endpoint_url}
        return make_settings(**{**values, **overrides})

    return factory
