"""`gensvc demo`: a Redis if none answers, the gateway, a GPU worker and the webhook worker on the
embedded model, one image generated through the API, everything stopped again.

The terminal shows only the demo's own lines, the job's progress and the image's path; the
children's JSON logs (and the supervisor's lines) go to a file whose path is printed first.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from generative_service import logs
from generative_service.cli.generate import generate
from generative_service.cli.supervisor import (
    Supervisor,
    check_port_free,
    child_env,
    ensure_redis,
    service_children,
    stop_redis,
)
from generative_service.client import Client
from generative_service.settings import get_settings

GIVE_UP_AFTER_DEATHS = 3  # the demo stops waiting for a child that keeps crashing at start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def log_path(args: argparse.Namespace) -> Path:
    """--log-file, else the output's name with `.log` beside it (demo.png -> demo.log)."""
    return Path(args.log_file or Path(args.out).with_suffix(".log")).resolve()


def json_line_writer(log: IO[bytes]) -> Callable[[str], None]:
    """A `log` callable for the supervisor that writes JSON lines in the children's own format."""
    formatter = logs.JsonFormatter("demo")

    def write(message: str) -> None:
        record = logging.LogRecord("gensvc.demo", logging.INFO, __file__, 0, message, None, None)
        log.write((formatter.format(record) + "\n").encode())
        log.flush()

    return write


def wait_ready(client: Client, supervisor: Supervisor, timeout_s: float, *, logs_at: Path) -> None:
    """Poll /readyz until a worker is up; keeps the children supervised meanwhile."""
    deadline = time.monotonic() + timeout_s
    print(
        "waiting for the gateway and a worker (the first start builds/loads the model)...",
        file=sys.stderr,
    )
    while time.monotonic() < deadline:
        if client.ready():
            return
        supervisor.check()
        broken = [
            child.name
            for child in supervisor.children
            if child.quick_deaths >= GIVE_UP_AFTER_DEATHS
        ]
        if broken:
            raise SystemExit(
                f"{', '.join(broken)} keeps exiting right after it starts; see its log in {logs_at}"
            )
        time.sleep(0.5)
    raise SystemExit(
        f"the service was not ready within {timeout_s:.0f} s (see the logs in {logs_at})"
    )


def run_demo(args: argparse.Namespace) -> int:
    """Start everything on the embedded default model, generate one image, stop everything."""
    settings = get_settings()
    port = args.port or free_port()
    check_port_free("demo", "127.0.0.1", port)  # never talk to whatever else listens there
    logs_at = log_path(args)
    print(f"gensvc demo: the service's logs go to {logs_at}", file=sys.stderr)
    with logs_at.open("wb") as log:
        note = json_line_writer(log)
        redis_port = ensure_redis(settings.redis_url, log=note)
        try:
            return _run(args, port=port, log=log, note=note, logs_at=logs_at)
        finally:
            stop_redis(redis_port)


def _run(
    args: argparse.Namespace,
    *,
    port: int,
    log: IO[bytes],
    note: Callable[[str], None],
    logs_at: Path,
) -> int:
    # Its own key prefix: the demo's job never runs on another deployment's workers (same Redis).
    prefix = {"GENSVC_KEY_PREFIX": f"gensvc-demo-{secrets.token_hex(4)}"}
    supervisor = Supervisor(service_children(host="127.0.0.1", port=port, workers=1), env=child_env(prefix),
                            log=note, output=log)  # fmt: skip
    supervisor.start()
    url = f"http://127.0.0.1:{port}"
    try:
        with Client(url) as client:
            wait_ready(client, supervisor, args.ready_timeout, logs_at=logs_at)
        body = {"prompt": args.prompt, "seed": args.seed}
        if args.steps:
            body["steps"] = args.steps
        code = generate(url, body, args.out)
        if code:
            print(f"the service's logs: {logs_at}", file=sys.stderr)
        return code
    finally:
        supervisor.stop()
