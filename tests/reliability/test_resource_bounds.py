"""Resource bounds of the gateway: many idle SSE clients share a bounded Redis pool; they do not
each hold a Redis connection. Measured on a private Redis, where every client but ours is the
gateway's, with CLIENT LIST."""

from __future__ import annotations

import threading
import time

import httpx

from .helpers import check_stream, wait_for

IDLE_STREAMS = 40
POOL = 4  # GENSVC_GATEWAY_REDIS_CONNECTIONS for this test


def _gateway_connections(redis_server) -> int:
    with redis_server.client() as client:
        me = client.client_id()
        return sum(1 for entry in client.client_list() if int(entry["id"]) != me)


class IdleStream:
    """One SSE client that reads (keep-alives, then the job's events) until the stream closes."""

    def __init__(self, url: str) -> None:
        self.text = ""
        self.opened = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url,), daemon=True)
        self.thread.start()

    def _run(self, url: str) -> None:
        with httpx.stream("GET", url, timeout=httpx.Timeout(60, connect=10)) as response:
            assert response.status_code == 200
            self.opened.set()
            for chunk in response.iter_text():
                self.text += chunk


def test_idle_sse_clients_share_a_bounded_redis_pool(start_service, fault_settings, private_redis):
    from .helpers import parse_sse

    redis_server = private_redis(appendonly=False)
    service = start_service(
        fault_settings(redis_url=redis_server.url, gateway_redis_connections=POOL), workers=0
    )
    url = service.base_url
    job_id = httpx.post(
        f"{url}/v1/jobs", json={"prompt": "a seven", "steps": 2}, timeout=10
    ).json()["id"]  # no worker: it waits
    wait_for(lambda: httpx.get(f"{url}/healthz").status_code == 200, what="gateway")
    before = _gateway_connections(redis_server)

    streams = []
    for _ in range(IDLE_STREAMS):  # one after another, so no burst of requests widens the sync pool
        streams.append(IdleStream(f"{url}/v1/jobs/{job_id}/events"))
        assert streams[-1].opened.wait(30), "a stream did not open"
    # Every idle client is served (keep-alives reach all of them) ...
    wait_for(
        lambda: all(": keep-alive" in stream.text for stream in streams),
        timeout=60,
        what="a keep-alive on every stream",
    )
    peak = max(_gateway_connections(redis_server) for _ in range(10) if time.sleep(0.2) is None)
    # ... by the bounded async pool: no Redis connection per idle client.
    assert peak - before <= POOL + 2, (
        f"{peak - before} more Redis connections for {IDLE_STREAMS} idle SSE clients (pool {POOL})"
    )

    # Every idle client still gets the job's ending, then its stream closes.
    assert httpx.post(f"{url}/v1/jobs/{job_id}/cancel", timeout=10).status_code == 200
    for stream in streams:
        stream.thread.join(30)
        assert not stream.thread.is_alive()
        assert check_stream(parse_sse(stream.text), job_id) == "canceled"
    time.sleep(1)
    assert _gateway_connections(redis_server) <= peak  # closing streams releases, never adds
