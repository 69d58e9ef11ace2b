"""Which job events become deliveries (filter, progress throttle), and that recording never hurts the job."""

from __future__ import annotations

import json
import logging
import socket

from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from rq import Queue

from generative_service.jobs import JobStore
from generative_service.schemas import BatchInfo, Event, ImageInfo, Stage, Timings
from generative_service.webhooks import outbox

from .conftest import submit


def queued_types(redis: Redis, settings) -> list[str]:
    queue = Queue(settings.keys.webhooks_queue, connection=redis)
    return [job.args[0]["type"] for job in queue.get_jobs()]


def start_job(store: JobStore, job_id: str) -> None:
    store.mark_started(job_id, batch=BatchInfo(id="b1", size=1, jobs=1), worker_id="w1")


def run_job(
    store: JobStore,
    job_id: str,
    *,
    steps: int = 3,
    ending: str = "succeeded",
    started: bool = False,
) -> None:
    """Drive a job the way a GPU worker does, through JobStore's named transitions."""
    if not started:
        start_job(store, job_id)
    store.set_stage(job_id, Stage.denoising)
    for step in range(1, steps + 1):
        store.report_progress(job_id, step, steps)
    if ending == "succeeded":
        store.set_stage(job_id, Stage.storing)
        image = ImageInfo(
            index=0,
            url=f"/v1/jobs/{job_id}/images/0",
            width=64,
            height=64,
            seed=1,
            content_type="image/png",
        )
        store.mark_succeeded(job_id, images=[image], timings=Timings())
    elif ending == "failed":
        store.mark_failed(job_id, code="generation_failed", message="out of memory")
    else:
        store.mark_canceled(job_id)


def test_default_filter_sends_only_the_terminal_event(redis_client, settings, store) -> None:
    record = submit(store, "http://127.0.0.1:9/hook")
    run_job(store, record.id)
    assert queued_types(redis_client, settings) == ["job.succeeded"]


def test_all_events_in_order_when_asked(redis_client, settings, store) -> None:
    record = submit(store, "http://127.0.0.1:9/hook", ["started", "progress", "completed"], steps=3)
    run_job(store, record.id, steps=3)
    # queued and stage events are never webhooks
    assert queued_types(redis_client, settings) == [
        "job.started",
        "job.progress",
        "job.progress",
        "job.progress",
        "job.succeeded",
    ]


def test_progress_is_throttled_but_the_terminal_event_never_dropped(
    redis_client, settings, store
) -> None:
    slow = settings.model_copy(update={"webhook_progress_interval_s": 3600})
    throttled = JobStore(redis_client, slow)
    record = submit(throttled, "http://127.0.0.1:9/hook", ["progress", "completed"], steps=5)
    run_job(throttled, record.id, steps=5, ending="failed")
    assert queued_types(redis_client, settings) == ["job.progress", "job.failed"]


def test_completed_covers_cancel(redis_client, settings, store) -> None:
    record = submit(store, "http://127.0.0.1:9/hook", ["started", "completed"])
    run_job(store, record.id, ending="canceled")
    assert queued_types(redis_client, settings) == ["job.started", "job.canceled"]


def test_terminal_payload_carries_the_full_job(redis_client, settings, store) -> None:
    record = submit(store, "http://127.0.0.1:9/hook")
    run_job(store, record.id)
    (job,) = Queue(settings.keys.webhooks_queue, connection=redis_client).get_jobs()
    message = job.args[0]
    body = json.loads(message["body"])
    assert body["type"] == "job.succeeded" and body["data"]["type"] == "succeeded"
    assert body["data"]["job"]["id"] == record.id and body["data"]["job"]["status"] == "succeeded"
    assert body["data"]["job"]["images"][0]["width"] == 64
    assert message["id"].startswith("msg_") and message["url"] == "http://127.0.0.1:9/hook"


def test_a_redis_failure_is_logged_never_raised(settings, store, caplog) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead_port = probe.getsockname()[1]
    dead = Redis(
        host="127.0.0.1", port=dead_port, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    record = submit(store, "http://127.0.0.1:9/hook")
    with caplog.at_level(logging.WARNING, logger="generative_service.webhooks.outbox"):
        outbox.on_event(dead, settings, record, Event(type="succeeded", job_id=record.id))
    assert any(r.getMessage() == "webhook.enqueue_failed" for r in caplog.records)
