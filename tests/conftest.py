"""Shared fixtures: a real Redis, isolated Settings, an in-process gateway, and a real service
(uvicorn gateway + `python -m workers.gpu_worker` subprocesses) for end-to-end and fault tests.

Isolation: every Settings gets its own `key_prefix` (`t_<test>_<random>`), storage and LoRA
directories; its Redis keys (and its RQ queues and jobs) are deleted after the test. The tiny
model is built once per session in a shared cache directory.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from redis import Redis
from redis.exceptions import RedisError
from support import free_port

from generative_service.keys import Keys
from generative_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_START_TIMEOUT_S = 60.0
WORKER_START_TIMEOUT_S = 600.0  # the first worker of a session builds the tiny model


def cleanup_prefix(redis: Redis, prefix: str) -> None:
    """Delete every key a test with this prefix left (Keys.purge)."""
    Keys(prefix).purge(redis)


def settings_env(settings: Settings) -> dict[str, str]:
    """`settings` as GENSVC_* environment variables, for child processes."""
    env = {}
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, list):
            value = ",".join(str(item) for item in value)
        elif isinstance(value, bool):
            value = "true" if value else "false"
        env[f"GENSVC_{name.upper()}"] = str(value)
    return env


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


@dataclass
class RunningService:
    """A gateway and workers running as real processes on one Settings."""

    settings: Settings
    env: dict[str, str]
    log_dir: Path
    base_url: str | None = None
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def client(self, **kwargs: object):
        from generative_service.client import Client

        return Client(self.base_url or "", **kwargs)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - the child owns it
        self.processes[name] = subprocess.Popen(
            argv,
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        return self.processes[name]

    def start_worker(
        self, name: str | None = None, args: list[str] | tuple[str, ...] = ()
    ) -> subprocess.Popen:
        """Start one more `python -m workers.gpu_worker ARGS`; its output goes to LOG_DIR/NAME.log."""
        name = name or f"worker-{sum(key.startswith('worker-') for key in self.processes)}"
        return self.start(name, [sys.executable, "-m", "workers.gpu_worker", *args])

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.processes[name].send_signal(sig)
        self.processes[name].wait(timeout=30)

    def logs(self, name: str) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def live_workers(self) -> int:
        from generative_service.redis_client import sync_redis

        redis = sync_redis(self.settings)  # the same Redis the service uses (Sentinel included)
        try:
            return sum(1 for _ in redis.scan_iter(match=f"{self.settings.key_prefix}:worker:*"))
        finally:
            redis.close()

    def wait_for_workers(self, count: int, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        """Wait until `count` workers heartbeat; fail with the logs of a worker that exited."""
        deadline = time.monotonic() + timeout_s
        while self.live_workers() < count:
            for name, process in self.processes.items():
                if name.startswith("worker") and process.poll() is not None:
                    pytest.fail(
                        f"{name} exited with {process.returncode}:\n{self.logs(name)[-4000:]}"
                    )
            if time.monotonic() > deadline:
                pytest.fail(f"{count} workers not alive after {timeout_s:.0f} s")
            time.sleep(0.2)

    def wait_for_gateway(self, timeout_s: float = SERVICE_START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if self.processes["gateway"].poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"gateway did not start:\n{self.logs('gateway')[-4000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def child_env(settings: Settings) -> dict[str, str]:
    """Our environment without any GENSVC_* of the developer's, plus `settings`."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("GENSVC_")}
    env.update(settings_env(settings))
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


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
