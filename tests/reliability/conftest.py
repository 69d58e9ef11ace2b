"""Fixtures of the reliability suite: private Redis servers a test may stop and restart (never
the shared one on 6379) and fault-test settings for a real gateway + worker."""

from __future__ import annotations

import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from redis import Redis
from redis.exceptions import RedisError

from .helpers import free_port, wait_for


class PrivateRedis:
    """A redis-server of the test's own on a free port, in its own directory.

    `appendonly=True` is the persistence docker-compose.yml configures (every write logged,
    replayed at start); False is a cache-only Redis that comes back empty.
    """

    def __init__(self, directory: Path, *, appendonly: bool) -> None:
        self.port = free_port()
        self.directory = directory
        self.appendonly = appendonly
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.directory),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no", "--appendfsync", "always"]  # fmt: skip
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(self.pings, timeout=15, what=f"redis-server on port {self.port}", every=0.05)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file (if any) and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=15)

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> Redis:
        return Redis.from_url(self.url, socket_connect_timeout=1, socket_timeout=10)

    def pings(self) -> bool:
        try:
            with self.client() as client:
                return bool(client.ping())
        except (RedisError, OSError):
            return False


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[..., PrivateRedis]]:
    """Factory: `private_redis(appendonly=True)` -> a started PrivateRedis, stopped after the test."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    servers: list[PrivateRedis] = []

    def factory(*, appendonly: bool = True) -> PrivateRedis:
        server = PrivateRedis(tmp_path / f"redis-{len(servers)}", appendonly=appendonly)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def fault_settings(make_settings):
    """Settings for fault tests: fast liveness (beat 1 s, dead after 5 s, maintenance 1 s)."""

    def factory(**overrides: object):
        values: dict = {
            "worker_heartbeat_s": 1,
            "worker_dead_after_s": 5,
            "worker_maintenance_s": 1,
            "batch_window_ms": 50,
        }
        values.update(overrides)
        return make_settings(**values)

    return factory
