"""Servers of the multi-machine tests, each a real process on free ports in its own directory:
a Redis master with replicas watched by Redis Sentinels, and moto's S3-protocol server.

Also used by `benchmarks/bench_failover.py`; no pytest here.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from redis import Redis

MASTER_NAME = "gensvc"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001 - not up yet (refused, reset, no master...)
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def sentinel_binary() -> list[str] | None:
    """`redis-sentinel` (Debian package redis-sentinel), else `redis-server --sentinel`."""
    if shutil.which("redis-sentinel"):
        return ["redis-sentinel"]
    if shutil.which("redis-server"):
        return ["redis-server", "--sentinel"]
    return None


@dataclass
class RedisNode:
    port: int
    directory: Path
    replica_of: int | None
    process: subprocess.Popen | None = None

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        # The persistence and replication settings docs/operations.md recommends.
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "yes",
                "--appendfsync", "everysec", "--repl-diskless-sync", "yes",
                "--repl-diskless-sync-delay", "0"]  # fmt: skip
        if self.replica_of:
            argv += ["--replicaof", "127.0.0.1", str(self.replica_of)]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - the child owns it
        self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        _wait(self.client().ping, timeout=15, what=f"redis-server on port {self.port}")

    def client(self) -> Redis:
        return Redis(port=self.port, socket_connect_timeout=1, socket_timeout=5)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=10)


@dataclass
class SentinelSet:
    """A master, `replicas` replicas and `sentinels` sentinels (quorum: a majority)."""

    root: Path
    replicas: int = 2
    sentinels: int = 3
    down_after_ms: int = 1000
    nodes: list[RedisNode] = field(default_factory=list)
    sentinel_ports: list[int] = field(default_factory=list)
    sentinel_processes: list[subprocess.Popen] = field(default_factory=list)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{port}" for port in self.sentinel_ports]

    def start(self) -> SentinelSet:
        binary = sentinel_binary()
        if binary is None:
            raise RuntimeError("redis-server is not installed (make test-deps)")
        master = RedisNode(free_port(), self.root / "node0", None)
        master.start()
        self.nodes.append(master)
        for index in range(self.replicas):
            node = RedisNode(free_port(), self.root / f"node{index + 1}", master.port)
            node.start()
            self.nodes.append(node)
        _wait(lambda: self._replicas_online(master) >= self.replicas, timeout=30, what="replicas")
        quorum = self.sentinels // 2 + 1
        for index in range(self.sentinels):
            port = free_port()
            directory = self.root / f"sentinel{index}"
            directory.mkdir(parents=True)
            config = directory / "sentinel.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master.port} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {self.down_after_ms}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 1\n"
            )
            log = open(directory / "sentinel.log", "ab")  # noqa: SIM115
            self.sentinel_processes.append(
                subprocess.Popen([*binary, str(config)], stdout=log, stderr=subprocess.STDOUT)
            )
            log.close()
            self.sentinel_ports.append(port)
        for port in self.sentinel_ports:
            _wait(lambda port=port: self._sentinel_sees_all(port), timeout=30, what="sentinels")
        return self

    def _replicas_online(self, master: RedisNode) -> int:
        return int(master.client().info("replication").get("connected_slaves", 0))

    def _sentinel_sees_all(self, port: int) -> bool:
        client = Redis(port=port, socket_connect_timeout=1, socket_timeout=2, decode_responses=True)
        state = client.sentinel_master(MASTER_NAME)
        return (
            int(state.get("num-slaves", 0)) >= self.replicas
            and int(state.get("num-other-sentinels", 0)) >= self.sentinels - 1
        )

    def master_port(self) -> int:
        client = Redis(port=self.sentinel_ports[0], socket_connect_timeout=1, socket_timeout=2)
        host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def master(self) -> RedisNode:
        port = self.master_port()
        return next(node for node in self.nodes if node.port == port)

    def wait_for_new_master(self, old_port: int, timeout: float = 30) -> int:
        _wait(lambda: self.master_port() != old_port, timeout=timeout, what="sentinel failover")
        return self.master_port()

    def stop(self) -> None:
        for process in self.sentinel_processes:
            if process.poll() is None:
                process.terminate()
        for process in self.sentinel_processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        for node in self.nodes:
            node.kill()


@dataclass
class S3Server:
    """moto's standalone S3-protocol server (`moto[server]`) over HTTP on a free port."""

    directory: Path
    port: int = 0
    process: subprocess.Popen | None = None

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        import httpx

        self.port = free_port()
        self.directory.mkdir(parents=True, exist_ok=True)
        log = open(self.directory / "moto.log", "ab")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.directory,
        )
        log.close()
        _wait(
            lambda: httpx.get(f"{self.endpoint_url}/moto-api/", timeout=1).status_code < 500,
            timeout=60,
            what="moto server",
        )
        return self

    def env(self) -> dict[str, str]:
        """AWS settings a client of this server needs (any credentials are accepted)."""
        return {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
