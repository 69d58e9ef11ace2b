"""The one place Redis clients are made: the gateway, GPU workers, the webhook sender and the CLI.

Plain Redis: `GENSVC_REDIS_URL`. Redis Sentinel: `GENSVC_REDIS_SENTINELS=host:port,...` and
`GENSVC_REDIS_SENTINEL_MASTER`; the clients then ask the sentinels where the master is and follow
a failover by themselves (a connection to a demoted or dead master is dropped and the next command
goes to the new one). `GENSVC_REDIS_URL` still gives the database number, user and password.

Durability: with `GENSVC_REDIS_MIN_REPLICAS` > 0 the gateway answers 202 only after that many
replicas acknowledged the new job (`WAIT`), so a master that dies right after accepting it cannot
take it along; `docs/operations.md` lists the matching `redis.conf` settings.
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.connection import parse_url
from redis.retry import Retry as SyncRetry

from generative_service.errors import Unavailable
from generative_service.keys import Ttl
from generative_service.settings import Settings

# Errors a failover produces: the old master gone (connection), a demoted one refusing writes
# (READONLY) or a master without replicas refusing them (NOREPLICAS, see min-replicas-to-write).
FAILOVER_ERRORS = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
_URL_KEYS = ("db", "username", "password")

# Long-running workers (GPU workers, the webhook sender). A blocking read (BLMOVE, BLPOP) waits at
# most WORKER_BLOCK_S; a read with no answer for WORKER_SOCKET_TIMEOUT_S means the connection is
# dead (the master's machine vanished without closing TCP, a half-open socket after a failover):
# redis-py drops it and the next command connects again (through the sentinels, to the master).
# NOTE: RQ raises a client's socket timeout to its dequeue timeout + 10 s (Worker._set_connection),
# so the webhook worker blocks for WORKER_BLOCK_S, not RQ's default of minutes (GPU workers: ~1 s).
WORKER_BLOCK_S = 10
WORKER_SOCKET_TIMEOUT_S = WORKER_BLOCK_S + 10
WORKER_HEALTH_CHECK_S = 15  # an idle connection is PINGed before reuse after this long


def _url_kwargs(settings: Settings) -> dict[str, Any]:
    kwargs = parse_url(settings.redis_url)
    if settings.redis_sentinels:
        return {key: kwargs[key] for key in _URL_KEYS if kwargs.get(key) is not None}
    return kwargs


def _sentinel_addresses(settings: Settings) -> list[tuple[str, int]]:
    addresses = []
    for item in settings.redis_sentinels:
        host, _, port = item.rpartition(":")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _sentinel_kwargs(settings: Settings, options: dict[str, Any]) -> dict[str, Any]:
    kwargs = {
        "socket_timeout": options.get("socket_timeout") or 2.0,
        "socket_connect_timeout": options.get("socket_connect_timeout") or 2.0,
    }
    if settings.redis_sentinel_password:
        kwargs["password"] = settings.redis_sentinel_password
    return kwargs


def sync_redis(settings: Settings, **options: Any) -> redis.Redis:
    """A client of the current master; `options` are redis-py connection options (timeouts...)."""
    kwargs = {**_url_kwargs(settings), **options}
    if not settings.redis_sentinels:
        return redis.Redis(connection_pool=redis.ConnectionPool(**kwargs))
    kwargs.setdefault("retry", SyncRetry(ExponentialBackoff(cap=1.0, base=0.1), retries=3))
    sentinel = redis.sentinel.Sentinel(
        _sentinel_addresses(settings), sentinel_kwargs=_sentinel_kwargs(settings, options)
    )
    return sentinel.master_for(settings.redis_sentinel_master, **kwargs)


def worker_redis(settings: Settings) -> redis.Redis:
    """The main client of a GPU worker or the webhook sender: bounded reads, TCP keepalive and a
    health check, so a dead connection is noticed and replaced instead of hanging the worker."""
    return sync_redis(
        settings,
        socket_timeout=WORKER_SOCKET_TIMEOUT_S,
        socket_connect_timeout=5,
        socket_keepalive=True,
        health_check_interval=WORKER_HEALTH_CHECK_S,
    )


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """A sentinel-managed pool that waits for a free connection instead of opening more."""


def async_redis(
    settings: Settings, *, max_connections: int | None = None, **options: Any
) -> redis.asyncio.Redis:
    """An asyncio client of the current master; with `max_connections`, a bounded (blocking) pool
    whose borrowers wait up to `socket_timeout` for a free connection.

    Async clients belong to the event loop they were made in.
    """
    kwargs = {**_url_kwargs(settings), **options}
    if max_connections is not None:
        kwargs["max_connections"] = max_connections
        kwargs["timeout"] = options.get("socket_timeout") or 10.0
    if not settings.redis_sentinels:
        pool_class = (
            redis.asyncio.BlockingConnectionPool
            if max_connections is not None
            else redis.asyncio.ConnectionPool
        )
        return redis.asyncio.Redis(connection_pool=pool_class(**kwargs))
    kwargs.setdefault("retry", AsyncRetry(ExponentialBackoff(cap=1.0, base=0.1), retries=3))
    sentinel = redis.asyncio.sentinel.Sentinel(
        _sentinel_addresses(settings), sentinel_kwargs=_sentinel_kwargs(settings, options)
    )
    sentinel_pool_class = (
        _BlockingSentinelPool
        if max_connections is not None
        else redis.asyncio.sentinel.SentinelConnectionPool
    )
    return sentinel.master_for(
        settings.redis_sentinel_master, connection_pool_class=sentinel_pool_class, **kwargs
    )


def reply_text(value: bytes | str) -> str:
    """A Redis reply value as text (a client may or may not decode its replies)."""
    return value.decode() if isinstance(value, bytes) else value


def describe(settings: Settings) -> str:
    """Where Redis is, for logs and error messages (no password)."""
    if settings.redis_sentinels:
        return f"sentinel master {settings.redis_sentinel_master!r} via {','.join(settings.redis_sentinels)}"
    kwargs = parse_url(settings.redis_url)
    return (
        f"redis {kwargs.get('host', '127.0.0.1')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"
    )


def confirm_replicated(client: redis.Redis, settings: Settings) -> None:
    """Wait until GENSVC_REDIS_MIN_REPLICAS replicas hold every write this client made.

    Raises Unavailable (503 with Retry-After) when they do not within
    GENSVC_REDIS_REPLICA_WAIT_MS: the write may then be lost in a failover, so the caller must not
    report it as accepted (a retry with the same Idempotency-Key finds the job if it survived).
    """
    if settings.redis_min_replicas <= 0:
        return
    # NOTE: WAIT counts the writes of its own connection only, and a pool may hand out another
    # one than the job's writes used: a write on the same connection first covers them all.
    pipe = client.pipeline(transaction=False)
    pipe.set(settings.keys.replication_probe, 1, px=Ttl.REPLICATION_PROBE_MS)
    pipe.wait(settings.redis_min_replicas, settings.redis_replica_wait_ms)
    acked = pipe.execute()[-1]
    if acked < settings.redis_min_replicas:
        raise Unavailable(
            f"Redis replication: {acked} of {settings.redis_min_replicas} replicas confirmed the job; retry with the same Idempotency-Key",
            retry_after_s=2,
        )
