"""The webhook worker: `python -m workers.webhook_worker [--burst] [--name NAME]`.

A CPU RQ worker on queue `P:webhooks` that runs `generative_service.webhooks.delivery.deliver`
jobs, one at a time, in-process (SimpleWorker: network I/O needs no fork). It also runs RQ's
scheduler, which moves due retries (`enqueue_at`) back onto the queue; with several webhook
workers RQ lets exactly one of them schedule. A receiver that hangs holds a worker for at most
3 x WEBHOOK_TIMEOUT_S + 5 s, so run more workers when many receivers are slow.
"""

from __future__ import annotations

import argparse
import sys

from redis import Redis
from rq import Queue, SimpleWorker

from generative_service import logs
from generative_service.redis_client import WORKER_BLOCK_S, worker_redis
from generative_service.settings import get_settings

log = logs.get_logger("workers.webhook_worker")


# NOTE: how often an idle worker retries RQ's scheduler lock (RQ's maintenance interval, 10 min by
# default). A worker killed hard leaves its lock for 61 s; the one restarted in its place takes
# over scheduling (the retries) within this long after that, not ten minutes later.
SCHEDULER_RETAKE_S = 15


class WebhookWorker(SimpleWorker):
    """RQ's SimpleWorker, blocking in Redis for WORKER_BLOCK_S at a time (redis_client.py)."""

    @property
    def dequeue_timeout(self) -> int:
        return WORKER_BLOCK_S


def build_worker(redis: Redis, queue_name: str, *, name: str | None = None) -> SimpleWorker:
    """An in-process RQ worker for the webhook queue."""
    return WebhookWorker(
        [Queue(queue_name, connection=redis)],
        connection=redis,
        name=name,
        maintenance_interval=SCHEDULER_RETAKE_S,
    )


def main(argv: list[str] | None = None) -> int:
    """Run the webhook worker until SIGTERM/SIGINT (or, with --burst, until the queue is empty)."""
    parser = argparse.ArgumentParser(
        prog="python -m workers.webhook_worker",
        description="Deliver signed webhooks from the RQ queue PREFIX:webhooks (runs the RQ scheduler for retries).",
    )
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    parser.add_argument("--name", default=None, help="RQ worker name (default: random)")
    args = parser.parse_args(argv)

    settings = get_settings()
    logs.configure(settings, "webhook-worker")
    if not settings.webhook_secrets:
        log.warning(
            "webhook.no_secret",
            extra={
                "hint": "set GENSVC_WEBHOOK_SECRETS=whsec_...; until then submit refuses webhooks"
            },
        )
    redis = worker_redis(settings)
    queue_name = settings.keys.webhooks_queue
    worker = build_worker(redis, queue_name, name=args.name)
    log.info("webhook_worker.started", extra={"queue": queue_name, "worker_id": worker.name})
    worker.work(burst=args.burst, with_scheduler=True, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
