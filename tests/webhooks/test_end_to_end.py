"""The real webhook worker (a subprocess) delivering the events of jobs driven through JobStore."""

from __future__ import annotations

import json

import pytest
from redis import Redis
from rq import Queue
from rq.registry import ScheduledJobRegistry
from standardwebhooks.webhooks import Webhook

from generative_service import webhooks
from generative_service.jobs import JobStore
from generative_service.schemas import JobStatus

from .conftest import SECRET_A, SECRET_B, Receiver, submit, wait_for
from .test_outbox import run_job, start_job


def verified(receiver: Receiver) -> list[dict]:
    """Every received body, checked against both rotated secrets with the reference library."""
    payloads = []
    for request in receiver.requests:
        for secret in (SECRET_A, SECRET_B):
            payload = Webhook(secret).verify(request.body, request.headers)
        payloads.append(payload)
    return payloads


def log(redis: Redis, store: JobStore, job_id: str) -> list[dict]:
    return webhooks.list_attempts(redis, store.settings, job_id)


def test_events_arrive_signed_in_order_and_filtered(
    redis_client, worker_store: JobStore, receiver: Receiver
) -> None:
    everything = submit(worker_store, receiver.url(), ["started", "progress", "completed"], steps=3)
    run_job(worker_store, everything.id, steps=3)
    wait_for(lambda: len(receiver.requests) == 5, what="5 webhooks")
    default = submit(worker_store, receiver.url("/only-completed"))
    run_job(worker_store, default.id)
    wait_for(lambda: len(receiver.requests) == 6, what="the 6th webhook")

    payloads = verified(receiver)
    assert [p["type"] for p in payloads] == [
        "job.started",
        "job.progress",
        "job.progress",
        "job.progress",
        "job.succeeded",
        "job.succeeded",
    ]
    assert [p["data"]["step"] for p in payloads[1:4]] == [1, 2, 3]
    assert {p["data"]["job_id"] for p in payloads[:5]} == {everything.id}
    assert (
        payloads[4]["data"]["job"]["status"] == "succeeded"
        and payloads[4]["data"]["job"]["id"] == everything.id
    )
    assert (
        receiver.requests[5].path == "/only-completed"
        and payloads[5]["data"]["job"]["id"] == default.id
    )
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 6  # one id per event

    attempts = wait_for(
        lambda: (
            len(log(redis_client, worker_store, everything.id)) == 5
            and log(redis_client, worker_store, everything.id)
        ),
        what="the delivery log",
    )
    assert [(a["event"], a["outcome"], a["status_code"]) for a in attempts] == [
        ("job.started", "delivered", 200),
        ("job.progress", "delivered", 200),
        ("job.progress", "delivered", 200),
        ("job.progress", "delivered", 200),
        ("job.succeeded", "delivered", 200),
    ]


def test_receiver_failing_twice_gets_the_same_webhook_id_three_times(
    redis_client, worker_store: JobStore, receiver: Receiver
) -> None:
    receiver.script = [500, 503]
    record = submit(worker_store, receiver.url())
    run_job(worker_store, record.id)

    wait_for(lambda: len(receiver.requests) == 3, what="two retries")
    payloads = verified(receiver)
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 1
    assert len({r.body for r in receiver.requests}) == 1
    assert payloads[0]["type"] == "job.succeeded"
    attempts = wait_for(
        lambda: (
            len(log(redis_client, worker_store, record.id)) == 3
            and log(redis_client, worker_store, record.id)
        ),
        what="3 attempts logged",
    )
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 500, "retry"),
        (2, 503, "retry"),
        (3, 200, "delivered"),
    ]
    assert (
        attempts[0]["next_retry_at"]
        and attempts[1]["next_retry_at"]
        and attempts[2]["next_retry_at"] is None
    )
    assert worker_store.get(record.id).status == JobStatus.succeeded


def test_410_stops_retries(redis_client, worker_store: JobStore, receiver: Receiver) -> None:
    receiver.script = [410]
    record = submit(worker_store, receiver.url())
    run_job(worker_store, record.id)

    (entry,) = wait_for(lambda: log(redis_client, worker_store, record.id), what="the attempt")
    assert (entry["status_code"], entry["outcome"], entry["next_retry_at"]) == (410, "gone", None)
    # The RQ job is deleted once the worker has finished with it (after any retry was scheduled).
    wait_for(
        lambda: not redis_client.exists(f"rq:job:{entry['webhook_id']}_1"),
        what="the delivery job to finish",
    )
    queue = Queue(worker_store.settings.keys.webhooks_queue, connection=redis_client)
    assert ScheduledJobRegistry(queue=queue).get_job_ids() == [] and queue.count == 0
    assert len(receiver.requests) == 1


def test_hanging_receiver_does_not_delay_the_job(
    redis_client, worker_store: JobStore, receiver: Receiver
) -> None:
    receiver.script = ["hang"]
    record = submit(worker_store, receiver.url(), ["started", "completed"], steps=3)
    start_job(worker_store, record.id)
    assert receiver.hanging.wait(20), "the started webhook never reached the receiver"

    # The receiver holds the `job.started` request open; the job goes on and ends regardless.
    run_job(worker_store, record.id, steps=3, started=True)
    assert worker_store.get(record.id).status == JobStatus.succeeded
    assert not receiver.hang_ended.is_set()  # ...while the receiver still holds the request

    wait_for(
        lambda: len(receiver.requests) == 3, what="the retried started event and the terminal event"
    )
    attempts = wait_for(
        lambda: (
            len(log(redis_client, worker_store, record.id)) == 3
            and log(redis_client, worker_store, record.id)
        ),
        what="3 attempts",
    )
    started = [a for a in attempts if a["event"] == "job.started"]
    assert [(a["attempt"], a["outcome"]) for a in started] == [(1, "retry"), (2, "delivered")]
    assert started[0]["error"].startswith("timeout") and started[0]["status_code"] is None
    assert [a["outcome"] for a in attempts if a["event"] == "job.succeeded"] == ["delivered"]
    receiver.release.set()


def test_retry_after_is_honoured_by_the_real_worker(
    redis_client, worker_store: JobStore, receiver: Receiver
) -> None:
    receiver.script = [(429, {"retry-after": "2"})]
    record = submit(worker_store, receiver.url())
    run_job(worker_store, record.id)

    wait_for(lambda: len(receiver.requests) == 2, what="the retry")
    first, second = receiver.requests
    # The schedule says 0.2 s; the receiver asked for 2 s, and RQ's whole-second scheduler
    # must not undercut it.
    assert second.at - first.at >= 2.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]


# --- through the gateway -------------------------------------------------------------------------


@pytest.fixture
def api(worker_store: JobStore):
    try:
        from fastapi.testclient import TestClient

        from generative_service.api.app import create_app
    except ImportError as exc:
        pytest.skip(f"gateway not importable yet: {exc}")
    with TestClient(create_app(worker_store.settings)) as client:
        yield client


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://10.0.0.5/hook", "private address"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:192.168.1.1]/hook", "private address (192.168.1.1) in an IPv6 encoding"),
        ("http://0x7f.1:8080/hook", "non-canonical"),
        ("gopher://example.com/", "scheme"),
    ],
)
def test_submit_with_internal_webhook_is_422(api, url: str, reason: str) -> None:
    response = api.post(
        "/v1/jobs", json={"prompt": "a red circle above a blue square", "webhook": url}
    )
    assert response.status_code == 422
    error = response.json()["error"]
    assert (
        error["code"] == "invalid_request"
        and error["message"].startswith("webhook:")
        and reason in error["message"]
    )


def test_delivery_log_is_served_by_the_gateway(
    api, worker_store: JobStore, receiver: Receiver
) -> None:
    receiver.script = [503]
    response = api.post(
        "/v1/jobs",
        json={"prompt": "a red circle above a blue square", "steps": 2, "webhook": receiver.url()},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    run_job(worker_store, job_id, steps=2)
    wait_for(lambda: len(receiver.requests) == 2, what="the retry")

    attempts = wait_for(
        lambda: (
            (data := api.get(f"/v1/jobs/{job_id}/webhooks").json()["data"])
            and len(data) == 2
            and data
        ),
        what="2 attempts served",
    )
    assert [(a["attempt"], a["status_code"], a["outcome"]) for a in attempts] == [
        (1, 503, "retry"),
        (2, 200, "delivered"),
    ]
    assert (
        attempts[0]["webhook_id"]
        == attempts[1]["webhook_id"]
        == receiver.requests[0].headers["webhook-id"]
    )
    assert json.loads(receiver.requests[1].body)["data"]["job"]["id"] == job_id
