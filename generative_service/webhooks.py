"""Webhook delivery (Standard Webhooks): signing, SSRF guard, retries, delivery log.

STUB: the webhooks issue (#4) replaces this module. The two entry points below are the contract
the rest of the service calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from generative_service.errors import InvalidRequest

if TYPE_CHECKING:
    from redis import Redis

    from generative_service.jobs import JobRecord
    from generative_service.schemas import Event
    from generative_service.settings import Settings


def validate_url(url: str, settings: Settings) -> None:
    """Raise InvalidRequest('webhook', reason) unless `url` is an allowed destination."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequest("webhook", "must be an http(s) URL with a host")


def on_event(redis: Redis, settings: Settings, record: JobRecord, event: Event) -> None:
    """Called for every event of a job that has a webhook. Only records; a CPU worker delivers."""
    return None


def list_attempts(redis: Redis, settings: Settings, job_id: str) -> list[dict]:
    """The job's delivery attempts, oldest first."""
    return []
