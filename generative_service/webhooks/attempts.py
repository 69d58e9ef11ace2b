"""The per-job delivery log that GET /v1/jobs/{id}/webhooks serves.

Redis keys (named in keys.py):
  P:webhook:log:{job_id}   list of JSON attempts, oldest first (capped at MAX_ENTRIES, newest kept);
                           expires RETENTION_S after the last attempt, like the job itself.
Each attempt: event (`job.succeeded`...), webhook_id, attempt (1-based), at (ISO time),
status_code (or null), error (or null), duration_ms, outcome (delivered, retry, failed, gone,
refused) and next_retry_at (ISO time, only when another attempt is scheduled).
"""

from __future__ import annotations

import json
from datetime import datetime

from redis import Redis

from generative_service import metrics
from generative_service.keys import Ttl
from generative_service.settings import Settings

MAX_ENTRIES = 1000
OUTCOMES = ("delivered", "retry", "failed", "gone", "refused")


def record_attempt(
    redis: Redis,
    settings: Settings,
    message: dict,
    *,
    attempt: int,
    at: datetime,
    outcome: str,
    duration_ms: float,
    status_code: int | None = None,
    error: str | None = None,
    next_retry_at: datetime | None = None,
) -> dict:
    """Append one attempt to the job's log and count its outcome. Returns the entry."""
    entry = {
        "event": message["type"],
        "webhook_id": message["id"],
        "attempt": attempt,
        "at": at.isoformat(),
        "status_code": status_code,
        "error": error,
        "duration_ms": round(duration_ms, 1),
        "outcome": outcome,
        "next_retry_at": next_retry_at.isoformat() if next_retry_at else None,
    }
    key = settings.keys.webhook_log(message["job_id"])
    pipe = redis.pipeline(transaction=True)
    pipe.rpush(key, json.dumps(entry))
    pipe.ltrim(key, -MAX_ENTRIES, -1)
    pipe.expire(key, Ttl.retention(settings))
    pipe.execute()
    metrics.webhook_delivery(redis, settings, outcome)
    return entry


def list_attempts(redis: Redis, settings: Settings, job_id: str) -> list[dict]:
    """The job's delivery attempts, oldest first (empty when none or expired)."""
    return [json.loads(raw) for raw in redis.lrange(settings.keys.webhook_log(job_id), 0, -1)]
