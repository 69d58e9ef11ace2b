"""Container health checks (Dockerfile.gpu HEALTHCHECK, docker-compose.yml healthcheck).

    python -m generative_service.healthcheck gateway [--url URL]   # GET /healthz answers 200
    python -m generative_service.healthcheck worker                # this host's worker heartbeats
    python -m generative_service.healthcheck redis                 # Redis answers PING

Exit status 0 = healthy, 1 = not (the reason goes to stderr). No torch import: it runs every few
seconds next to a busy worker.
"""

from __future__ import annotations

import argparse
import socket
import sys
import urllib.request

from generative_service.metrics import live_worker_records
from generative_service.redis_client import describe, sync_redis
from generative_service.settings import get_settings


def check_gateway(url: str) -> str | None:
    """None when `url` answers 200, else the reason."""
    try:
        with urllib.request.urlopen(url, timeout=4) as response:  # noqa: S310 - fixed local URL
            return None if response.status == 200 else f"{url} answered {response.status}"
    except OSError as exc:
        return f"{url}: {exc}"


def check_redis() -> str | None:
    """None when Redis answers PING."""
    settings = get_settings()
    try:
        sync_redis(settings, socket_timeout=3, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
        return f"{describe(settings)}: {exc}"
    return None


def check_worker(hostname: str | None = None) -> str | None:
    """None when a worker on this host has a live heartbeat key in Redis.

    A worker's liveness key expires when it stops heart-beating (hung CUDA call, dead process),
    so a stale one makes the container unhealthy and `restart` policies / operators act on it.
    """
    reason = check_redis()
    if reason:
        return reason
    settings = get_settings()
    host = hostname or socket.gethostname()
    redis = sync_redis(settings, socket_timeout=3, socket_connect_timeout=3)
    for worker_id, info in live_worker_records(redis, settings).items():
        if host in worker_id or info.get("hostname") == host or info.get("host") == host:
            return None
    return f"no live worker heartbeat for host {host!r} under prefix {settings.key_prefix!r}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m generative_service.healthcheck", description=__doc__.splitlines()[0]
    )
    parser.add_argument("target", choices=["gateway", "worker", "redis"])
    parser.add_argument(
        "--url", default="http://127.0.0.1:8000/healthz", help="gateway liveness URL"
    )
    args = parser.parse_args(argv)
    if args.target == "gateway":
        reason = check_gateway(args.url)
    elif args.target == "worker":
        reason = check_worker()
    else:
        reason = check_redis()
    if reason:
        print(f"unhealthy: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
