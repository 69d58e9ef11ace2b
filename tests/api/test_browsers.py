"""What a web page on another origin needs: CORS (GENSVC_CORS_ORIGINS) with preflight for every
route it calls, an event stream that stops a finished EventSource (204), and SSE frames that no
client reads as empty events (httpx-sse)."""

from __future__ import annotations

import threading
import time

import httpx_sse
import pytest

OK = {"prompt": "a red square", "steps": 3}
PAGE = "https://app.example.com"


@pytest.fixture
def cors_client(make_settings, make_api_client):
    return make_api_client(make_settings(cors_origins=[PAGE], api_keys=["k"]))


@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("POST", "/v1/jobs", "authorization, content-type, idempotency-key, prefer"),
        ("GET", "/v1/jobs/job_0123456789abcdef01234567/events", "authorization, last-event-id"),
        ("POST", "/v1/jobs/job_0123456789abcdef01234567/cancel", "authorization"),
        ("DELETE", "/v1/loras/ink", "authorization"),
        ("POST", "/openai/v1/images/generations", "authorization, content-type"),
        ("POST", "/sdapi/v1/txt2img", "content-type"),
    ],
)
def test_preflight_allows_what_pages_send(cors_client, method, path, headers):
    response = cors_client.options(
        path,
        headers={
            "Origin": PAGE,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": headers,
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["access-control-allow-origin"] == PAGE
    assert method in response.headers["access-control-allow-methods"]
    allowed = response.headers["access-control-allow-headers"].lower()
    assert all(name.strip() in allowed for name in headers.split(","))


def test_responses_and_errors_carry_cors_headers(cors_client):
    answer = cors_client.post(
        "/v1/jobs", json=OK, headers={"Origin": PAGE, "Authorization": "Bearer k"}
    )
    assert answer.status_code == 202 and answer.headers["access-control-allow-origin"] == PAGE
    assert "location" in answer.headers["access-control-expose-headers"].lower()
    denied = cors_client.get("/v1/jobs", headers={"Origin": PAGE})
    assert denied.status_code == 401 and denied.headers["access-control-allow-origin"] == PAGE
    stranger = cors_client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in stranger.headers


def test_no_cors_by_default(api_client):
    preflight = api_client.options(
        "/v1/jobs", headers={"Origin": PAGE, "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status_code == 405 and "access-control-allow-origin" not in preflight.headers
    assert (
        "access-control-allow-origin"
        not in api_client.get("/healthz", headers={"Origin": PAGE}).headers
    )


def test_reconnect_after_the_terminal_event_is_204(api_client, fake_worker):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    fake_worker.run(job_id)
    with httpx_sse.connect_sse(api_client, "GET", f"/v1/jobs/{job_id}/events") as source:
        seen = list(source.iter_sse())
    assert seen[-1].event == "succeeded"
    again = api_client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": seen[-1].id})
    assert again.status_code == 204 and again.content == b""
    # One event short of the end is not "done": the stream sends the rest.
    missed = api_client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": seen[-2].id})
    assert missed.status_code == 200 and "event: succeeded" in missed.text


def test_httpx_sse_sees_no_empty_events(api_client, fake_worker, settings):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]

    def finish_after_keep_alives() -> None:
        time.sleep(settings.sse_keepalive_s * 3)
        fake_worker.start(job_id)
        time.sleep(settings.sse_keepalive_s * 3)  # keep-alives after an event with an id
        fake_worker.progress(job_id, 3)
        fake_worker.succeed(job_id)

    thread = threading.Thread(target=finish_after_keep_alives)
    thread.start()
    with httpx_sse.connect_sse(api_client, "GET", f"/v1/jobs/{job_id}/events") as source:
        seen = list(source.iter_sse())
    thread.join()
    assert [event.event for event in seen] == [
        "queued", "started", "progress", "progress", "progress", "stage", "succeeded"
    ]  # fmt: skip
    assert all(event.data and event.id for event in seen)
    assert seen[0].retry == 2000
