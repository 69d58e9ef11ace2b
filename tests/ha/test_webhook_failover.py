"""Webhooks across a Redis Sentinel failover: a retry pending in the old master is delivered by
the webhook worker (and its RQ scheduler) after the new master took over, and webhooks of jobs
that end after the failover go out too."""

from __future__ import annotations

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from support import wait_for

from generative_service.jobs import JobStore
from generative_service.redis_client import sync_redis
from generative_service.schemas import BatchInfo, GenerationRequest

from .test_sentinel import sentinel_settings

SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


class Receiver(ThreadingHTTPServer):
    """Answers 500 to the first request, 200 after; keeps (webhook-id, type) of each."""

    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                receiver.received.append((self.headers["webhook-id"], body))
                self.send_response(500 if len(receiver.received) == 1 else 200)
                self.send_header("content-length", "0")
                self.end_headers()

        super().__init__(("127.0.0.1", 0), Handler)
        self.daemon_threads = True
        threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"


def _end_job(store: JobStore, url: str) -> str:
    record, _ = store.create(
        GenerationRequest(
            prompt="a seven", steps=2, webhook=url, webhook_events_filter=["completed"]
        )
    )
    store.mark_started(record.id, batch=BatchInfo(id="b1", size=1, jobs=1), worker_id="w1")
    store.mark_failed(record.id, code="generation_failed", message="boom")
    return record.id


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_pending_webhook_retry_is_delivered_after_a_failover(
    make_settings, sentinel_set, start_service
) -> None:
    settings = sentinel_settings(
        make_settings, sentinel_set, webhook_secrets=[SECRET], webhook_retry_schedule=["5", "5", "5"],
        webhook_timeout_s=2,
    )  # fmt: skip
    service = start_service(settings, workers=0, gateway=False)
    service.start("webhook-worker", [sys.executable, "-m", "workers.webhook_worker"])
    receiver = Receiver()
    try:
        store = JobStore(sync_redis(settings), settings)
        _end_job(store, receiver.url())
        wait_for(lambda: len(receiver.received) == 1, what="the first (failing) attempt")
        time.sleep(0.5)  # the retry is scheduled (and replicated) 5 s out

        old = sentinel_set.master()
        old.kill()
        sentinel_set.wait_for_new_master(old.port)

        wait_for(lambda: len(receiver.received) >= 2, timeout=120, what="the retry after failover")
        assert receiver.received[1] == receiver.received[0]  # same webhook-id, same body
        _end_job(store, receiver.url())  # a job that ends on the new master
        wait_for(lambda: len(receiver.received) >= 3, timeout=60, what="a webhook after failover")
        assert receiver.received[2][0] != receiver.received[0][0]
        assert service.processes["webhook-worker"].poll() is None, service.logs("webhook-worker")[
            -4000:
        ]
    finally:
        receiver.shutdown()
        receiver.server_close()
