"""One delivery attempt: vet, sign, POST to the pinned address, log, maybe schedule a retry.

`deliver(message, attempt)` is the RQ job the webhook worker runs. Decisions:
  2xx            delivered
  410            gone (the receiver asked us to stop)
  other 4xx      failed, not retried (the request will not get better)
  3xx            a failure, retried; redirects are never followed (they could point anywhere)
  429, 5xx, connection error, timeout, DNS failure
                 retried after WEBHOOK_RETRY_SCHEDULE[attempt-1] seconds ±10 %, or later when the
                 receiver sent Retry-After (capped at WEBHOOK_RETRY_AFTER_MAX_S); failed when the
                 schedule is used up
  destination refused by the SSRF guard (its DNS changed since submit), no signing secret
                 refused, not retried
"""

from __future__ import annotations

import email.utils
import functools
import math
import random
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import certifi
import httpx
from redis import Redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from generative_service.errors import InvalidRequest
from generative_service.logs import get_logger
from generative_service.redis_client import sync_redis
from generative_service.settings import Settings, get_settings
from generative_service.webhooks import attempts, guard, outbox, signing

log = get_logger(__name__)

MAX_RESPONSE_BYTES = 4096
# Addresses of one host tried in turn when a connect fails (a dual-stack host, a dead replica).
MAX_ADDRESSES_TRIED = 3
JITTER = 0.1
USER_AGENT = "gensvc-webhooks/1"


@dataclass
class Result:
    """What one attempt produced: a status code, or an error; `final` errors are never retried."""

    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None
    final: bool = False


def deliver(message: dict, attempt: int = 1) -> str:
    """RQ entry point: run attempt `attempt` of `message` with this process's settings."""
    settings = get_settings()
    job = get_current_job()
    redis = job.connection if job is not None else sync_redis(settings)
    return run_attempt(redis, settings, message, attempt)


def run_attempt(
    redis: Redis,
    settings: Settings,
    message: dict,
    attempt: int,
    *,
    resolver: guard.Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> str:
    """Send `message` once, log the attempt, schedule the next one if due. Returns the outcome."""
    at = datetime.now(UTC)
    started = time.monotonic()
    try:
        result = send(settings, message, resolver=resolver, ssl_context=ssl_context)
    except JobTimeoutException:
        result = Result(
            error=f"timeout: no complete answer within {outbox.delivery_timeout_s(settings)} s"
        )
    outcome, next_at = decide(settings, result, attempt)
    attempts.record_attempt(
        redis,
        settings,
        message,
        attempt=attempt,
        at=at,
        outcome=outcome,
        duration_ms=(time.monotonic() - started) * 1000,
        status_code=result.status_code,
        error=result.error,
        next_retry_at=next_at,
    )
    if next_at is not None:  # after the log entry, so the log stays in attempt order
        outbox.enqueue_delivery(redis, settings, message, attempt=attempt + 1, at=next_at)
    log.info(
        "webhook.attempt",
        extra={
            "job_id": message["job_id"],
            "webhook_id": message["id"],
            "event_type": message["type"],
            "attempt": attempt,
            "outcome": outcome,
            "status_code": result.status_code,
            "error": result.error,
        },
    )
    return outcome


def decide(settings: Settings, result: Result, attempt: int) -> tuple[str, datetime | None]:
    """(outcome, time of the next attempt or None)."""
    code = result.status_code
    if result.final:
        return "refused", None
    if code is not None and 200 <= code < 300:
        return "delivered", None
    if code == 410:
        return "gone", None
    if code is not None and 400 <= code < 500 and code != 429:
        return "failed", None
    schedule = settings.retry_schedule_s
    if attempt > len(schedule):
        return "failed", None
    delay = schedule[attempt - 1] * random.uniform(1 - JITTER, 1 + JITTER)
    if result.retry_after_s is not None:
        delay = max(delay, min(result.retry_after_s, settings.webhook_retry_after_max_s))
    # RQ's scheduler keeps whole seconds and truncates: round up so Retry-After is never undercut.
    due = math.ceil((datetime.now(UTC) + timedelta(seconds=delay)).timestamp())
    return "retry", datetime.fromtimestamp(due, UTC)


def send(
    settings: Settings,
    message: dict,
    *,
    resolver: guard.Resolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Result:
    """Vet the destination again (DNS may have changed), sign and POST. Never raises for I/O."""
    keys = signing.secret_keys(settings)
    if not keys:
        return Result(error="no signing secret configured (GENSVC_WEBHOOK_SECRETS)", final=True)
    try:
        destination = guard.resolve_destination(message["url"], settings, resolver=resolver)
    except guard.UnresolvableHost as exc:
        return Result(error=f"dns: {exc.reason}")
    except InvalidRequest as exc:
        return Result(error=f"refused: {exc.reason}", final=True)
    body = message["body"].encode()
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "host": destination.host_header,
        **signing.headers(keys, message["id"], int(time.time()), body),
    }
    error = "no address to connect to"
    for address in destination.addresses[:MAX_ADDRESSES_TRIED]:
        try:
            return _post(
                settings, destination, address, headers, body, ssl_context or _default_ssl_context()
            )
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            error = f"connect to {address}: {_describe(exc)}"
        except httpx.TimeoutException as exc:
            return Result(error=f"timeout: {_describe(exc)}")
        except httpx.HTTPError as exc:
            return Result(error=f"{type(exc).__name__}: {_describe(exc)}")
    return Result(error=error)


def _post(
    settings: Settings,
    destination: guard.Destination,
    address,
    headers: dict,
    body: bytes,
    ssl_context: ssl.SSLContext,
) -> Result:
    """One POST to the pinned `address`. A fresh client each time: a pooled connection made for
    another host name on the same address must never carry this request (its TLS was for that name).
    """
    extensions = {"sni_hostname": destination.host} if destination.scheme == "https" else {}
    deadline = time.monotonic() + settings.webhook_timeout_s
    with httpx.Client(
        verify=ssl_context,
        trust_env=False,
        follow_redirects=False,
        timeout=settings.webhook_timeout_s,
    ) as client:
        request = client.build_request(
            "POST",
            destination.url_for(address),
            content=body,
            headers=headers,
            extensions=extensions,
        )
        response = client.send(request, stream=True)
        try:
            _read_capped(response, deadline)
        finally:
            response.close()
    return Result(
        status_code=response.status_code,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )


def _read_capped(response: httpx.Response, deadline: float) -> None:
    """Read at most MAX_RESPONSE_BYTES of the body (undecoded), stopping at `deadline`."""
    received = 0
    for chunk in response.iter_raw(1024):
        received += len(chunk)
        if received >= MAX_RESPONSE_BYTES or time.monotonic() > deadline:
            break


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


@functools.cache
def _default_ssl_context() -> ssl.SSLContext:
    """Certificate and host-name checking against the Mozilla CA bundle (httpx's default too)."""
    return ssl.create_default_context(cafile=certifi.where())


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
