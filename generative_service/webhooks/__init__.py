"""Webhooks (Standard Webhooks): signing, delivery with retries, SSRF guard, delivery log.

The rest of the service calls three functions:
  validate_url(url, settings)                  gateway, at submit: InvalidRequest('webhook', reason)
  on_event(redis, settings, record, event)     JobStore, for every event of a job with a webhook
  list_attempts(redis, settings, job_id)       gateway, GET /v1/jobs/{id}/webhooks

Modules: guard (SSRF policy, pinned destinations), signing (whsec_ HMAC signatures),
outbox (event -> queued delivery), delivery (one attempt + retry decisions, the RQ job),
attempts (the per-job delivery log). `python -m workers.webhook_worker` runs the deliveries.

Without any GENSVC_WEBHOOK_SECRETS a webhook could not be signed, so submit refuses it (422)
rather than send unsigned requests or invent a secret nobody was given.
"""

from __future__ import annotations

from generative_service.errors import InvalidRequest
from generative_service.settings import Settings
from generative_service.webhooks.attempts import list_attempts
from generative_service.webhooks.guard import Resolver, resolve_destination
from generative_service.webhooks.outbox import DELIVER_FUNC, on_event

__all__ = ["DELIVER_FUNC", "list_attempts", "on_event", "validate_url"]


def validate_url(url: str, settings: Settings, *, resolver: Resolver | None = None) -> None:
    """Raise InvalidRequest('webhook', reason) unless `url` is an allowed, signable destination.

    Resolves the host (blocking DNS lookup): async callers should run it in a thread.
    """
    if not settings.webhook_secrets:
        raise InvalidRequest(
            "webhook",
            "webhooks are disabled on this server: no signing secret is configured (GENSVC_WEBHOOK_SECRETS)",
        )
    resolve_destination(url, settings, resolver=resolver)
