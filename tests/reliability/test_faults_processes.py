"""Faults with real processes (uvicorn gateway, GPU worker, webhook worker; tiny model): a client
that drops its SSE stream, a gateway that crashes mid-job, a worker stopped by SIGTERM mid-batch,
webhook receivers that are down, slow or failing.

After each: every job ends in a truthful terminal state, each stream shows one ending and no
repeats, no job ran twice, and the queue keeps flowing. (SIGKILL of a worker mid-batch is in
tests/workers/test_worker_faults.py.)
"""

from __future__ import annotations

import json
import signal
import sys

import httpx
import pytest
from standardwebhooks.webhooks import Webhook

from .helpers import (
    LONG,
    QUICK,
    Follower,
    WebhookReceiver,
    check_stream,
    free_port,
    get_job,
    read_stream,
    wait_for,
    wait_terminal,
)

SECRET = "whsec_" + "cmVsaWFiaWxpdHktc3VpdGUtc2VjcmV0LWtleQ=="


def _submit(base_url: str, body: dict) -> str:
    response = httpx.post(f"{base_url}/v1/jobs", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _step(base_url: str, job_id: str) -> int:
    return get_job(base_url, job_id)["progress"]["step"]


def _image_ok(base_url: str, job: dict) -> bool:
    return all(
        httpx.get(f"{base_url}{image['url']}", timeout=10).status_code == 200
        for image in job["images"]
    ) and bool(job["images"])


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_client_drops_its_stream_and_the_gateway_crashes_mid_job(start_service, fault_settings):
    service = start_service(fault_settings(), workers=1)
    url = service.base_url

    # A client drops its stream at the first progress event; the job goes on without it.
    job_id = _submit(url, LONG)
    first, ended = read_stream(url, job_id, stop=lambda frame: frame["event"] == "progress")
    assert not ended
    wait_for(
        lambda: (
            get_job(url, job_id)["status"] != "running"
            or _step(url, job_id) > first[-1]["data"]["step"]
        ),
        what="the job to go on",
    )
    rest, ended = read_stream(
        url, job_id, after=first[-1]["id"]
    )  # resume after the last event seen
    assert ended and check_stream(first + rest, job_id) == "succeeded"
    replay, _ = read_stream(url, job_id)
    assert [frame["id"] for frame in first + rest] == [
        frame["id"] for frame in replay
    ]  # nothing lost or repeated

    # The gateway crashes (SIGKILL) while a client follows a running job, and comes back.
    job_id = _submit(url, LONG)
    follower = Follower(url, job_id)
    assert follower.opened.wait(30), "the SSE client did not connect"
    wait_for(lambda: _step(url, job_id) >= 1, what="the second job to start")
    argv = list(service.processes["gateway"].args)
    service.kill("gateway", signal.SIGKILL)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=2)
    service.start("gateway", argv)
    service.wait_for_gateway()

    follower.join(180)
    assert follower.reconnects >= 1 and check_stream(follower.frames, job_id) == "succeeded"
    job = get_job(url, job_id)
    assert job["attempts"] == 1 and _image_ok(url, job)  # ran once, untouched by the gateway crash
    assert wait_terminal(url, [_submit(url, QUICK)], timeout=120)[0]["status"] == "succeeded"


@pytest.mark.slow  # the core of it (finish the batch, exit 0) runs by default in tests/workers
def test_sigterm_mid_batch_finishes_it_and_the_queue_flows_to_the_next_worker(
    start_service, fault_settings
):
    service = start_service(fault_settings(batch_window_ms=1500), workers=0)
    url = service.base_url
    batch = [_submit(url, {**LONG, "seed": seed}) for seed in (1, 2)]
    # Both wait when the worker comes up, so it takes them as one batch (a worker that is
    # already idle starts a lone job at once, before a second submit can join it).
    service.start_worker("worker-0")
    service.wait_for_workers(1)
    wait_for(lambda: all(_step(url, job_id) >= 1 for job_id in batch), what="the batch to start")
    behind = _submit(url, {**QUICK, "width": 72, "height": 72})  # cannot join the running batch
    followers = [Follower(url, job_id) for job_id in [*batch, behind]]

    worker = service.processes["worker-0"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=240) == 0  # finished its batch, then exited cleanly

    finished = [get_job(url, job_id) for job_id in batch]
    assert all(
        job["status"] == "succeeded" and job["attempts"] == 1 and _image_ok(url, job)
        for job in finished
    ), finished
    assert finished[0]["batch"]["id"] == finished[1]["batch"]["id"], finished
    waiting = get_job(url, behind)
    assert (
        waiting["status"] == "queued"
        and waiting["attempts"] == 0
        and waiting["queue_position"] == 1
    )  # not lost, not taken

    service.start_worker("worker-1")
    assert wait_terminal(url, [behind], timeout=240)[0]["status"] == "succeeded"
    for follower, job_id in zip(followers, [*batch, behind], strict=True):
        assert check_stream(follower.join(60).frames, job_id) == "succeeded"


@pytest.mark.slow  # each behaviour alone runs by default in tests/webhooks
def test_webhook_receivers_down_slow_or_failing_never_hold_up_jobs(start_service, fault_settings):
    failing, slow = WebhookReceiver("error", failures=2), WebhookReceiver("slow", delay_s=3.0)
    down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    settings = fault_settings(
        webhook_secrets=[SECRET], webhook_retry_schedule=["1", "1", "1"], webhook_timeout_s=1.0
    )
    try:
        service = start_service(settings, workers=1)
        service.start("webhook-worker", [sys.executable, "-m", "workers.webhook_worker"])
        url = service.base_url
        targets = {"failing": failing.url, "slow": slow.url, "down": down}
        ids = {
            name: _submit(url, {**QUICK, "seed": seed, "webhook": target})
            for seed, (name, target) in enumerate(targets.items())
        }

        # Every job succeeds whatever its receiver does.
        assert all(
            job["status"] == "succeeded"
            for job in wait_terminal(url, list(ids.values()), timeout=180)
        )

        def log(name: str) -> list[dict]:
            return httpx.get(f"{url}/v1/jobs/{ids[name]}/webhooks", timeout=10).json()["data"]

        # 500, 500, then delivered: the same signed message each time.
        attempts = wait_for(
            lambda: (data := log("failing")) and data[-1]["outcome"] == "delivered" and data,
            timeout=90,
            what="delivery after retries",
        )
        assert [(a["status_code"], a["outcome"]) for a in attempts] == [
            (500, "retry"),
            (500, "retry"),
            (204, "delivered"),
        ]
        assert len({headers["webhook-id"] for headers, _ in failing.requests}) == 1
        for headers, body in failing.requests:
            assert Webhook(SECRET).verify(body, headers)["data"]["job"]["id"] == ids["failing"]
        assert json.loads(failing.requests[-1][1])["type"] == "job.succeeded"
        # Down and slow receivers: each attempt says why it failed; the schedule ends in `failed`.
        for name, why in (("down", "connect"), ("slow", "timed out")):
            attempts = wait_for(
                lambda name=name: (data := log(name)) and data[-1]["outcome"] == "failed" and data,
                timeout=120,
                what=f"{name} to give up",
            )
            assert len(attempts) == 4 and all(
                a["error"] and a["status_code"] is None for a in attempts
            ), attempts
            assert why in attempts[0]["error"].lower(), attempts[0]
        assert (
            get_job(url, ids["slow"])["status"] == "succeeded"
        )  # a webhook failure never fails the job
    finally:
        failing.close()
        slow.close()
