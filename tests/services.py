"""Real service processes for tests: the gateway and workers as subprocesses on one Settings.

Shared by tests/conftest.py (its fixtures) and by test packages that start their own service
(tests/web); importable as `services` because tests/ is on sys.path. (A test package's
conftest.py cannot `from conftest import ...`: another package's conftest may hold that name.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from redis import Redis

from generative_service.keys import Keys
from generative_service.settings import Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
SERVICE_START_TIMEOUT_S = 60.0
WORKER_START_TIMEOUT_S = 600.0  # the first worker of a session builds the tiny model


def cleanup_prefix(redis: Redis, prefix: str) -> None:
    """Delete every key a test with this prefix left (Keys.purge)."""
    Keys(prefix).purge(redis)


def wait_for_health(
    base_url: str, process: subprocess.Popen, logs: Callable[[], str], timeout_s: float
) -> None:
    """Wait until `base_url`/healthz answers 200; fail with `logs()` if `process` exits first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"gateway did not start:\n{logs()[-4000:]}")
        time.sleep(0.1)


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

    def live_worker_count(self) -> int:
        from generative_service.redis_client import sync_redis

        redis = sync_redis(self.settings)  # the same Redis the service uses (Sentinel included)
        try:
            return sum(1 for _ in redis.scan_iter(match=self.settings.keys.worker_pattern))
        finally:
            redis.close()

    def wait_for_workers(self, count: int, timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        """Wait until `count` workers heartbeat; fail with the logs of a worker that exited."""
        deadline = time.monotonic() + timeout_s
        while self.live_worker_count() < count:
            for name, process in self.processes.items():
                if name.startswith("worker") and process.poll() is not None:
                    pytest.fail(
                        f"{name} exited with {process.returncode}:\n{self.logs(name)[-4000:]}"
                    )
            if time.monotonic() > deadline:
                pytest.fail(f"{count} workers not alive after {timeout_s:.0f} s")
            time.sleep(0.2)

    def wait_for_gateway(self, timeout_s: float = SERVICE_START_TIMEOUT_S) -> None:
        wait_for_health(
            self.base_url or "", self.processes["gateway"], lambda: self.logs("gateway"), timeout_s
        )

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
    env.update(settings.as_env())
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env
