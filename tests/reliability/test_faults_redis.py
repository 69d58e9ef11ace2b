"""Redis restarting under a running service (gateway + GPU worker, tiny model), with a job
running, jobs queued and a client following over SSE.

The Redis here is a private redis-server per test (never the shared one). With the persistence
docker-compose.yml configures (append-only file) queued jobs survive and everything finishes;
without persistence the data is gone, and the service says so instead of hanging.
"""

from __future__ import annotations

import httpx
import pytest

from .helpers import (
    LONG,
    QUICK,
    Follower,
    check_error,
    check_stream,
    get_job,
    read_stream,
    wait_for,
    wait_terminal,
)


def _submit(base_url: str, body: dict) -> str:
    response = httpx.post(f"{base_url}/v1/jobs", json=body, timeout=10)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _running(base_url: str, job_id: str) -> bool:
    return get_job(base_url, job_id)["progress"]["step"] >= 1


def _while_down(base_url: str) -> None:
    """With Redis away the gateway answers 503 with Retry-After, fast, and stays alive."""
    response = httpx.post(f"{base_url}/v1/jobs", json=QUICK, timeout=15)
    check_error(response, 503, "unavailable", "Redis is unavailable")
    assert response.headers["retry-after"]
    assert httpx.get(f"{base_url}/readyz", timeout=15).status_code == 503
    assert httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_redis_restart_with_appendonly_loses_nothing(start_service, fault_settings, private_redis):
    redis_server = private_redis(appendonly=True)
    service = start_service(fault_settings(redis_url=redis_server.url), workers=1)
    url = service.base_url
    running = _submit(url, LONG)
    wait_for(lambda: _running(url, running), what="the long job to start")
    queued = [_submit(url, {**QUICK, "seed": seed}) for seed in (1, 2)]
    follower = Follower(url, running)
    assert follower.opened.wait(30), "the SSE client did not connect"

    redis_server.stop()
    _while_down(url)
    redis_server.start()

    jobs = wait_terminal(url, [running, *queued], timeout=240)
    for job in jobs[1:]:  # the queued jobs survived in the append-only file and ran
        assert job["status"] == "succeeded", job["error"]
        assert httpx.get(f"{url}{job['images'][0]['url']}", timeout=10).status_code == 200
    # The running job ends truthfully: done with its image, or failed saying why.
    first = jobs[0]
    if first["status"] == "succeeded":
        assert httpx.get(f"{url}{first['images'][0]['url']}", timeout=10).status_code == 200
    else:
        assert first["status"] == "failed" and first["error"]["message"], first
    # The client that followed it through the outage saw each event once and one ending.
    assert check_stream(follower.join(60).frames, running) == first["status"]
    for job_id in queued:  # and a fresh replay agrees: one terminal event per job
        frames, ended = read_stream(url, job_id, timeout=30)
        assert ended and check_stream(frames, job_id) == "succeeded"
    # The queue keeps flowing, and the service is ready again.
    assert wait_terminal(url, [_submit(url, QUICK)], timeout=120)[0]["status"] == "succeeded"
    wait_for(
        lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, what="readyz", timeout=30
    )
    assert (
        service.processes["worker-0"].poll() is None and service.processes["gateway"].poll() is None
    )
    assert "Traceback" not in service.logs("gateway")  # the SSE stream rode out the outage cleanly


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_redis_restart_without_persistence_says_what_was_lost(
    start_service, fault_settings, private_redis
):
    redis_server = private_redis(appendonly=False)
    service = start_service(fault_settings(redis_url=redis_server.url), workers=1)
    url = service.base_url
    running = _submit(url, LONG)
    wait_for(lambda: _running(url, running), what="the long job to start")
    queued = _submit(url, QUICK)
    follower = Follower(url, running, reconnect=False)
    assert follower.opened.wait(30), "the SSE client did not connect"

    redis_server.stop()
    _while_down(url)
    redis_server.start()  # empty: no append-only file, no snapshot

    # Nobody hangs: the open stream closes, and every lookup names the loss and what to do.
    follower.join(60)
    assert not follower.ended
    for job_id in (running, queued):
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/events"):
            error = check_error(
                httpx.get(f"{url}{path}", timeout=10), 404, "not_found", f"job {job_id!r} not found"
            )
            assert (
                "restarted without persistence" in error["message"]
                and "submit it again" in error["message"]
            ), error
    # A job id that never existed gets no such note.
    check_error(httpx.get(f"{url}/v1/jobs/job_0123456789abcdef01234567", timeout=10), 404)
    assert (
        "persistence"
        not in httpx.get(f"{url}/v1/jobs/job_0123456789abcdef01234567", timeout=10).text
    )

    # The worker survives the loss of the job it was running, and the queue keeps flowing.
    resubmitted = _submit(url, QUICK)
    assert wait_terminal(url, [resubmitted], timeout=120)[0]["status"] == "succeeded"
    wait_for(
        lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, what="readyz", timeout=30
    )
    assert service.processes["worker-0"].poll() is None
    assert "Traceback" not in service.logs("gateway")
