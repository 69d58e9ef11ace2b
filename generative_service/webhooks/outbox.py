"""From job events to queued deliveries. Runs inside whatever process changes the job.

The GPU worker (and the gateway, for cancels) call `on_event` for every event of a job that has a
webhook. It only decides whether the event is wanted, freezes the exact body and enqueues an RQ job
on `P:webhooks`; the webhook worker (workers/webhook_worker.py) does the network I/O. So a slow or
dead receiver never slows generation, and a Redis hiccup here is logged, never raised.

Redis keys (named in keys.py):
  rq:queue:P:webhooks           deliveries waiting (RQ); retries wait in its scheduled registry
  P:webhook:throttle:{job_id}   set for WEBHOOK_PROGRESS_INTERVAL_S after a `job.progress` is queued
"""

from __future__ import annotations

import json
import math
import secrets
from datetime import UTC, datetime

from redis import Redis
from rq import Queue, Retry

from generative_service.keys import Ttl
from generative_service.logs import get_logger
from generative_service.schemas import Event
from generative_service.settings import Settings

log = get_logger(__name__)

DELIVER_FUNC = "generative_service.webhooks.delivery.deliver"
# A killed webhook worker abandons its current delivery; RQ runs it again this many times.
ABANDONED_RETRIES = 2


def filter_name(event: Event) -> str | None:
    """The `webhook_events_filter` entry that selects `event`, or None if never sent."""
    if event.is_terminal:
        return "completed"
    if event.type in ("started", "progress"):
        return event.type
    return None


def on_event(redis: Redis, settings: Settings, record, event: Event) -> None:
    """Queue a delivery of `event` if the job's filter wants it. Never raises."""
    try:
        wanted = filter_name(event)
        if wanted is None or wanted not in record.request.webhook_events_filter:
            return
        if event.type == "progress" and not _progress_slot(redis, settings, record.id):
            return
        enqueue_delivery(redis, settings, build_message(record.request.webhook, event))
    except Exception as exc:  # noqa: BLE001 - a webhook must never fail or slow the job
        log.warning(
            "webhook.enqueue_failed",
            extra={
                "job_id": getattr(record, "id", None),
                "event_type": event.type,
                "error": repr(exc),
            },
        )


def _progress_slot(redis: Redis, settings: Settings, job_id: str) -> bool:
    """True at most once per WEBHOOK_PROGRESS_INTERVAL_S per job (one atomic SET NX PX)."""
    interval_ms = Ttl.webhook_throttle_ms(settings)
    if interval_ms <= 0:
        return True
    return bool(redis.set(settings.keys.webhook_throttle(job_id), "1", nx=True, px=interval_ms))


def build_message(url: str, event: Event) -> dict:
    """The delivery, frozen: the same id and body bytes go out on every retry."""
    data = event.to_payload()
    body = {"type": f"job.{event.type}", "timestamp": data["at"], "data": data}
    return {
        "id": "msg_" + secrets.token_hex(12),
        "job_id": event.job_id,
        "url": url,
        "type": body["type"],
        "body": json.dumps(body, separators=(",", ":")),
    }


def delivery_timeout_s(settings: Settings) -> int:
    """RQ job timeout of one attempt: connect + send + response, with slack."""
    return math.ceil(settings.webhook_timeout_s * 3) + 5


def enqueue_delivery(
    redis: Redis, settings: Settings, message: dict, *, attempt: int = 1, at: datetime | None = None
) -> None:
    """Queue attempt `attempt` of `message`, now or (retries) at `at`."""
    queue = Queue(settings.keys.webhooks_queue, connection=redis)
    args = (message, attempt)
    job_id = f"{message['id']}_{attempt}"
    timeout = delivery_timeout_s(settings)
    description = f"webhook {message['type']} {message['job_id']} attempt {attempt}"
    retry = Retry(max=ABANDONED_RETRIES)
    if at is None or at <= datetime.now(UTC):
        queue.enqueue_call(
            DELIVER_FUNC, args=args, timeout=timeout, job_id=job_id, description=description,
            result_ttl=0, failure_ttl=settings.retention_s, retry=retry,
        )  # fmt: skip
    else:
        queue.enqueue_at(
            at, DELIVER_FUNC, args=args, job_timeout=timeout, job_id=job_id,
            description=description, result_ttl=0, failure_ttl=settings.retention_s, retry=retry,
        )  # fmt: skip
