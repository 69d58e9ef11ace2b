"""`gensvc up`: a Redis when none answers, then gateway, GPU workers and the webhook worker as
child processes; a child that dies is restarted (with backoff when it keeps dying), and Ctrl-C or
SIGTERM stops them all (and the Redis this command started).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO
from urllib.parse import urlsplit

from redis import Redis
from redis.exceptions import RedisError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
QUICK_DEATH_S = (
    10.0  # a child that dies sooner than this after starting backs off before the next try
)
MAX_BACKOFF_S = 30.0


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: ours, offline model hub unless told otherwise."""
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.update(extra or {})
    return env


class PortInUse(SystemExit):
    """Raised (exit status 2) when the gateway's port is taken: say so at once, never start."""

    def __init__(self, command: str, host: str, port: int) -> None:
        super().__init__(2)
        self.message = (
            f"gensvc {command}: port {port} on {host} is already in use (another gensvc or "
            f"another program); stop it or pass --port"
        )


def check_port_free(command: str, host: str, port: int) -> None:
    """Raise PortInUse if nothing could listen on `host:port` now (uvicorn binds the same way)."""
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            error = PortInUse(command, host, port)
            print(error.message, file=sys.stderr)
            raise error from None


def redis_answers(url: str, timeout_s: float = 1.0) -> bool:
    try:
        client = Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (RedisError, OSError):
        return False


def ensure_redis(url: str, *, log: Callable[[str], None] = print) -> int | None:
    """Start a throwaway local Redis (no persistence) unless one answers at `url`.

    Returns the port of the Redis it started (stop it with `stop_redis`), or None if one was there.
    Raises SystemExit with a hint when none answers and none can be started.
    """
    if redis_answers(url):
        return None
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if host not in LOCAL_HOSTS:
        raise SystemExit(
            f"Redis at {host}:{port} does not answer (GENSVC_REDIS_URL); start it or point the URL elsewhere"
        )
    server = shutil.which("redis-server")
    if server is None:
        raise SystemExit(
            "no Redis answers and redis-server is not installed: `apt-get install redis-server` (or run scripts/ensure-redis)"
        )
    log(f"starting redis-server on port {port} (no persistence)")
    subprocess.run(
        [server, "--daemonize", "yes", "--port", str(port), "--save", "", "--appendonly", "no"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if redis_answers(url, timeout_s=0.2):
            return port
        time.sleep(0.1)
    raise SystemExit(f"redis-server did not start on port {port}")


def stop_redis(port: int | None) -> None:
    """Shut down the Redis `ensure_redis` started (nothing when it found one running)."""
    if port is None:
        return
    try:
        Redis(host="127.0.0.1", port=port, socket_connect_timeout=1).shutdown(nosave=True)
    except (RedisError, OSError):
        pass  # shutdown closes the connection under us; that is the success case


@dataclass
class Child:
    """One supervised process."""

    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float | None = None
    restarts: int = field(default=0)


class Supervisor:
    """Starts children, restarts the ones that die, stops them all on request.

    `output`: a file for the children's stdout and stderr (their JSON logs); None = ours.
    """

    def __init__(self, children: list[Child], *, env: dict[str, str] | None = None, log: Callable[[str], None] = print,
                 stop_timeout_s: float = 20.0, output: IO[bytes] | None = None) -> None:  # fmt: skip
        self.children = children
        self.env = env if env is not None else child_env()
        self.log = log
        self.output = output
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False

    def start(self) -> None:
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        # NOTE: own session, so a terminal's Ctrl-C reaches only us and we stop children in order.
        child.process = subprocess.Popen(child.argv, env=self.env, start_new_session=True, stdout=self.output,
                                         stderr=None if self.output is None else subprocess.STDOUT)  # fmt: skip
        child.started_at = time.monotonic()
        child.restart_at = None
        self.log(f"started {child.name} (pid {child.process.pid})")

    def check(self) -> None:
        """Restart children that exited (after a backoff when they die right after starting)."""
        now = time.monotonic()
        for child in self.children:
            if self.stopping or child.process is None:
                continue
            code = child.process.poll()
            if code is None:
                continue
            if child.restart_at is None:
                # NOTE: the whole group: a child killed hard leaves its own children (the webhook
                # worker's RQ scheduler, which holds the scheduler lock) running as orphans.
                _signal_group(child.process, signal.SIGKILL)
                quick = now - child.started_at < QUICK_DEATH_S
                child.quick_deaths = child.quick_deaths + 1 if quick else 0
                delay = min(MAX_BACKOFF_S, 0.5 * 2**child.quick_deaths) if quick else 0.0
                child.restart_at = now + delay
                self.log(f"{child.name} exited with code {code}; restarting in {delay:.1f} s")
            if now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)

    def run_forever(self, *, poll_s: float = 0.5) -> None:
        """Supervise until SIGINT/SIGTERM, then stop every child."""

        def request_stop(signum: int, _frame: object) -> None:
            self.stopping = True

        previous = {
            sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            while not self.stopping:
                self.check()
                time.sleep(poll_s)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def stop(self) -> None:
        """SIGTERM every child, wait for them, SIGKILL whatever is left after `stop_timeout_s`."""
        self.stopping = True
        alive = [
            (child.name, child.process)
            for child in self.children
            if child.process is not None and child.process.poll() is None
        ]
        for _, process in alive:
            _signal_group(process, signal.SIGTERM)
        deadline = time.monotonic() + self.stop_timeout_s
        for name, process in alive:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"{name} did not stop in {self.stop_timeout_s:.0f} s; killing it")
                _signal_group(process, signal.SIGKILL)
                process.wait()
        for child in self.children:  # whatever a child left behind in its group
            if child.process is not None:
                _signal_group(child.process, signal.SIGKILL)
        if alive:
            self.log("stopped " + ", ".join(name for name, _ in alive))


def _signal_group(process: subprocess.Popen, sig: int) -> None:
    """Signal the child's process group (each child leads its own session, see _spawn)."""
    try:
        os.killpg(process.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is gone already


def service_children(
    *, host: str, port: int, workers: int, python: str = sys.executable
) -> list[Child]:
    """Gateway, `workers` GPU workers and one webhook worker."""
    children = [
        Child(
            "gateway",
            [python, "-m", "generative_service.cli", "api", "--host", host, "--port", str(port)],
        )
    ]
    children += [
        Child(f"gpu-worker-{index}", [python, "-m", "workers.gpu_worker"])
        for index in range(workers)
    ]
    children.append(Child("webhook-worker", [python, "-m", "workers.webhook_worker"]))
    return children


def run_up(*, host: str, port: int, workers: int) -> int:
    """`gensvc up`: Redis if none answers, then the service's processes until Ctrl-C."""
    from generative_service.settings import get_settings

    check_port_free("up", host, port)  # before anything starts or is printed
    redis_port = ensure_redis(get_settings().redis_url)
    supervisor = Supervisor(
        service_children(host=host, port=port, workers=workers), env=child_env()
    )
    supervisor.start()
    print(
        f"gensvc up: http://{host}:{port} (docs at /docs); Ctrl-C stops everything", file=sys.stderr
    )
    try:
        supervisor.run_forever()
    finally:
        stop_redis(redis_port)
    return 0
