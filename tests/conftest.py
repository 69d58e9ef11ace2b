"""Shared fixtures: a real Redis, isolated Settings, an in-process gateway, and a real service
(uvicorn gateway + `python -m workers.gpu_worker` subprocesses) for end-to-end and fault tests.

Isolation: every Settings gets its own `key_prefix` (`t_<test>_<random>`), storage and LoRA
directories; its Redis keys (and its RQ queues and jobs) are deleted after the test. The tiny
model is built once per session in a shared cache directory.
"""

from __future__ import annotations

import re
import secrets
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError
from services import (
    RunningService,
    child_env,
    cleanup_prefix,
)
from support import free_port

from generative_service.settings import Settings


@pytest.fixture(scope="session")
def redis_url() -> str:
    return Settings().redis_url


@pytest.fixture(scope="session", name="redis")
def redis_fixture(redis_url: str) -> Iterator[Redis]:
    """A Redis client; the test is skipped when no Redis answers (run `make redis`)."""
    client = Redis.from_url(redis_url, socket_connect_timeout=1, socket_timeout=10)
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        pytest.skip(f"no Redis at {redis_url} ({exc}); start one with `make redis`")
    yield client
    client.close()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """CACHE_DIR shared by the session, so the tiny model is built once."""
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture
def make_settings(
    redis: Redis,
    redis_url: str,
    tmp_path: Path,
    model_cache_dir: Path,
    request: pytest.FixtureRequest,
) -> Iterator[Callable[..., Settings]]:
    """Factory of isolated Settings: `make_settings(max_queued=2, api_keys=["k"])`.

    Defaults: model "tiny" (64 px), unique key_prefix, tmp storage and LoRA dirs (pass
    `lora_dir=None` to get CACHE_DIR/loras seeded with the tiny bundle's sample adapters),
    loopback webhooks allowed, fast heartbeats and keep-alives.
    """
    made: list[str] = []
    label = re.sub(r"[^A-Za-z0-9]", "", request.node.name)[:24]

    def factory(**overrides: object) -> Settings:
        values: dict = {
            "redis_url": redis_url,
            "key_prefix": f"t_{label}_{secrets.token_hex(4)}",
            "storage_dir": tmp_path / "images",
            "cache_dir": model_cache_dir,
            "lora_dir": tmp_path / "loras",
            "model": "tiny",
            "api_keys": [],
            "webhook_allow_loopback": True,
            "worker_heartbeat_s": 1,
            "worker_dead_after_s": 5,
            "sse_keepalive_s": 0.5,
            "wait_max_s": 10,
            "job_timeout_s": 120,
        }
        values.update(overrides)
        settings = Settings(**values)
        made.append(settings.key_prefix)
        return settings

    yield factory
    for prefix in made:
        cleanup_prefix(redis, prefix)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
def make_api_client() -> Iterator[Callable[..., TestClient]]:
    """Factory of in-process gateway clients (lifespan run, server errors returned as responses)."""
    from generative_service.api import create_app

    opened: list[TestClient] = []

    def factory(settings: Settings, *, headers: dict[str, str] | None = None) -> TestClient:
        client = TestClient(create_app(settings), raise_server_exceptions=False, headers=headers)
        client.__enter__()
        opened.append(client)
        return client

    yield factory
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def api_client(make_api_client: Callable[..., TestClient], settings: Settings) -> TestClient:
    """The gateway in-process on `settings`."""
    return make_api_client(settings)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator[Callable[..., RunningService]]:
    """Factory: `start_service(settings, workers=1, gateway=True, worker_args=())` -> RunningService.

    The gateway runs `gensvc api` (uvicorn) on a free port; workers run `python -m
    workers.gpu_worker`. It returns once the gateway answers /healthz and `workers` workers
    heartbeat. Everything is stopped (SIGTERM, then SIGKILL) after the test.
    """
    started: list[RunningService] = []

    def factory(settings: Settings, *, workers: int = 1, gateway: bool = True, worker_args: list[str] | tuple[str, ...] = (),
                wait: bool = True) -> RunningService:  # fmt: skip
        log_dir = tmp_path / f"logs-{len(started)}"
        log_dir.mkdir()
        service = RunningService(settings=settings, env=child_env(settings), log_dir=log_dir)
        started.append(service)
        if gateway:
            port = free_port()
            service.base_url = f"http://127.0.0.1:{port}"
            service.start(
                "gateway",
                [sys.executable, "-m", "generative_service.cli", "api", "--port", str(port)],
            )
        for _ in range(workers):
            service.start_worker(args=worker_args)
        if wait and gateway:
            service.wait_for_gateway()
        if wait and workers:
            service.wait_for_workers(workers)
        return service

    yield factory
    for service in started:
        service.stop()


@pytest.fixture
def service(start_service: Callable[..., RunningService], settings: Settings) -> RunningService:
    """Gateway + one GPU worker on `settings`, ready to take jobs."""
    return start_service(settings, workers=1)


@pytest.fixture
def process_env() -> Callable[[Settings], dict[str, str]]:
    """`process_env(settings)`: the environment a child process needs to run on `settings`."""
    return child_env


@pytest.fixture
def browser() -> Iterator[object]:
    """A headless Chromium (selenium WebDriver) with a fresh profile; see tests/browser.py."""
    from browser import chromium

    with chromium() as driver:
        yield driver
