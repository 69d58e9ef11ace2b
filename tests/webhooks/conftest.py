"""Fixtures of the webhook tests: isolated settings, a scriptable local receiver, the real worker.

The receiver is a real HTTP server on 127.0.0.1 (allowed by `webhook_allow_loopback`); each
request takes the next scripted reply: a status (with optional headers), or "hang" (hold the
request open until released or `hang_s` passes).
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from redis import Redis
from support import wait_for as _wait_for

from generative_service.jobs import JobStore
from generative_service.schemas import GenerationRequest
from generative_service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
SECRET_A = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECRET_B = "whsec_" + "dGVzdC1yb3RhdGlvbi1zZWNvbmQtc2VjcmV0IQ=="
SECRETS = [SECRET_A, SECRET_B]
# Webhook deliveries are quick: give up sooner than the shared default.
wait_for = functools.partial(_wait_for, timeout=20.0)


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float


@dataclass
class Receiver:
    """A local webhook receiver whose replies follow `script` (then `default`)."""

    script: list = field(default_factory=list)
    default: object = 200
    hang_s: float = 10.0
    requests: list[Received] = field(default_factory=list)
    release: threading.Event = field(default_factory=threading.Event)
    hanging: threading.Event = field(default_factory=threading.Event)
    hang_ended: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None
    flood_bytes: int = 64 * 1024 * 1024
    flooded: int = 0
    flood_done: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def bodies(self, path: str = "/hook") -> list[bytes]:
        return [r.body for r in self.requests if r.path == path]

    def next_reply(self) -> object:
        return self.script.pop(0) if self.script else self.default


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            receiver.requests.append(
                Received(
                    self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                )
            )
            reply = receiver.next_reply()
            if reply == "hang":
                receiver.hanging.set()
                receiver.release.wait(receiver.hang_s)
                receiver.hang_ended.set()
                return
            if reply == "flood":
                self._flood()
                return
            status, headers = (reply, {}) if isinstance(reply, int) else reply
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("content-length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST

        def _flood(self) -> None:
            """A 200 with a huge body, written until the client hangs up."""
            self.send_response(200)
            self.send_header("content-length", str(receiver.flood_bytes))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                while receiver.flooded < receiver.flood_bytes:
                    self.wfile.write(chunk)
                    receiver.flooded += len(chunk)
            except OSError:
                pass
            finally:
                receiver.flood_done.set()
                self.close_connection = True

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    rec.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    rec.server.daemon_threads = True
    thread = threading.Thread(
        target=rec.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    yield rec
    rec.release.set()
    rec.server.shutdown()
    rec.server.server_close()


def _cleanup(redis: Redis, prefix: str) -> None:
    for pattern in (f"{prefix}:*", f"rq:*{prefix}:*"):
        keys = list(redis.scan_iter(pattern, count=500))
        if keys:
            redis.delete(*keys)


@pytest.fixture(scope="module")
def redis_client() -> Iterator[Redis]:
    client = Redis.from_url("redis://127.0.0.1:6379/0")
    try:
        client.ping()
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"Redis not reachable at 127.0.0.1:6379: {exc}")
    yield client
    client.close()


def make_settings(prefix: str, **overrides) -> Settings:
    values = {
        "key_prefix": prefix,
        "webhook_allow_loopback": True,
        "webhook_secrets": SECRETS,
        "webhook_retry_schedule": "0.2,0.2,0.2",
        "webhook_timeout_s": 1.0,
        "webhook_progress_interval_s": 0,
        "webhook_retry_after_max_s": 30,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(redis_client: Redis) -> Iterator[Settings]:
    prefix = f"t_wh_{secrets.token_hex(4)}"
    yield make_settings(prefix)
    _cleanup(redis_client, prefix)


@pytest.fixture
def store(redis_client: Redis, settings: Settings) -> JobStore:
    return JobStore(redis_client, settings)


def submit(store: JobStore, url: str, events: list[str] | None = None, steps: int = 3):
    request = GenerationRequest(
        prompt="a red circle above a blue square",
        steps=steps,
        webhook=url,
        webhook_events_filter=events or ["completed"],
    )
    record, _ = store.create(request)
    return record


@dataclass
class WorkerProcess:
    settings: Settings
    process: subprocess.Popen
    log_path: Path


@pytest.fixture(scope="module")
def webhook_worker(redis_client: Redis, tmp_path_factory) -> Iterator[WorkerProcess]:
    """The real `python -m workers.webhook_worker` on a module-wide prefix."""
    prefix = f"t_whw_{secrets.token_hex(4)}"
    worker_settings = make_settings(prefix)
    env = {
        **os.environ,
        "GENSVC_KEY_PREFIX": prefix,
        "GENSVC_WEBHOOK_ALLOW_LOOPBACK": "true",
        "GENSVC_WEBHOOK_SECRETS": ",".join(SECRETS),
        "GENSVC_WEBHOOK_RETRY_SCHEDULE": "0.2,0.2,0.2",
        "GENSVC_WEBHOOK_TIMEOUT_S": "1",
        "GENSVC_WEBHOOK_RETRY_AFTER_MAX_S": "30",
        "GENSVC_REDIS_URL": "redis://127.0.0.1:6379/0",
        "HF_HUB_OFFLINE": "1",
    }
    log_path = tmp_path_factory.mktemp("webhook_worker") / "worker.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "workers.webhook_worker"],
            cwd=ROOT,
            env=env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    yield WorkerProcess(worker_settings, process, log_path)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pass
    try:  # the worker's own session: also ends a scheduler child it may have left behind
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()
    _cleanup(redis_client, prefix)


@pytest.fixture
def worker_store(redis_client: Redis, webhook_worker: WorkerProcess) -> JobStore:
    """A JobStore sharing the worker's prefix (jobs it emits are delivered by the real worker)."""
    assert webhook_worker.process.poll() is None, webhook_worker.log_path.read_text()
    return JobStore(redis_client, webhook_worker.settings)
