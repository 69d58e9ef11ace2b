"""Metrics, structured logs and readiness, on a real service (uvicorn gateway + GPU worker process)."""

from __future__ import annotations

import json
import shutil
import subprocess
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from support import free_port

from generative_service import metrics

PROMPT = "a red circle above a blue square, zebra-striped observability marker"
STEPS = 4
SERIES = (
    "gensvc_jobs_submitted",
    "gensvc_jobs_finished",
    "gensvc_queue_depth",
    "gensvc_queue_wait_seconds",
    "gensvc_batch_size",
    "gensvc_denoise_step_seconds",
    "gensvc_job_latency_seconds",
    "gensvc_nsfw_flagged",
    "gensvc_webhook_deliveries",
    "gensvc_workers_alive",
)


def scrape(base_url: str) -> dict[tuple[str, tuple], float]:
    """GET /metrics parsed: (sample name, sorted labels) -> value."""
    response = httpx.get(f"{base_url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def family_names(base_url: str) -> set[str]:
    return {
        family.name
        for family in text_string_to_metric_families(
            httpx.get(f"{base_url}/metrics", timeout=10).text
        )
    }


def wait_until(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)


def run_job(base_url: str) -> dict:
    body = {
        "prompt": PROMPT,
        "steps": STEPS,
        "width": 64,
        "height": 64,
        "seed": 7,
        "guidance_scale": 5.0,
    }
    submitted = httpx.post(f"{base_url}/v1/jobs", json=body, timeout=30)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    job: dict = {}

    def finished() -> bool:
        nonlocal job
        job = httpx.get(f"{base_url}/v1/jobs/{job_id}", timeout=10).json()
        return job["status"] in ("succeeded", "failed", "canceled")

    wait_until(finished, 300, f"job {job_id}")
    assert job["status"] == "succeeded", job
    return job


def json_lines(text: str) -> list[dict]:
    """Every non-empty line as JSON; fails naming the first line that is not."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            pytest.fail(f"log line is not JSON: {line[:300]!r}")
    return out


def test_service_readiness_metrics_and_logs(start_service, settings):
    # 1. Gateway alone: alive but not ready, and /readyz says why.
    service = start_service(settings, workers=0)
    assert httpx.get(f"{service.base_url}/healthz", timeout=5).status_code == 200
    not_ready = httpx.get(f"{service.base_url}/readyz", timeout=5)
    assert not_ready.status_code == 503
    assert not_ready.json()["checks"]["redis"]["ok"] is True
    assert not_ready.json()["checks"]["workers"]["ok"] is False
    assert "worker" in not_ready.json()["checks"]["workers"]["reason"]
    assert scrape(service.base_url)[("gensvc_workers_alive", ())] == 0

    # 2. A worker joins: ready.
    service.start_worker("worker-0")
    service.wait_for_workers(1)
    wait_until(
        lambda: httpx.get(f"{service.base_url}/readyz", timeout=5).status_code == 200,
        30,
        "readyz 200",
    )

    # 3. One job later, /metrics has every named series with the job in it.
    job = run_job(service.base_url)

    def recorded() -> bool:
        # The batch's own series are written after its jobs' results went out.
        samples = scrape(service.base_url)
        finished = samples.get(("gensvc_jobs_finished_total", (("status", "succeeded"),)))
        return finished == 1 and samples.get(("gensvc_batch_size_count", ()), 0) >= 1

    wait_until(recorded, 30, "jobs_finished and batch_size metrics")
    samples = scrape(service.base_url)
    assert SERIES and all(name in family_names(service.base_url) for name in SERIES)
    assert samples[("gensvc_jobs_submitted_total", (("queue", "default"),))] == 1
    assert samples[("gensvc_queue_depth", (("queue", "default"),))] == 0
    assert samples[("gensvc_workers_alive", ())] == 1
    assert samples[("gensvc_queue_workers_alive", (("queue", "default"),))] == 1
    assert samples[("gensvc_job_latency_seconds_count", ())] == 1
    assert (
        0 < samples[("gensvc_job_latency_seconds_sum", ())] <= job["timings"]["total_ms"] / 1000 + 1
    )
    assert samples[("gensvc_queue_wait_seconds_count", ())] == 1
    assert samples[("gensvc_batch_size_count", ())] >= 1
    assert samples[("gensvc_batch_size_sum", ())] >= 1
    # The worker times steps 2..N (the first interval also holds prompt encoding).
    assert samples[("gensvc_denoise_step_seconds_count", ())] >= STEPS - 1
    assert samples[("gensvc_nsfw_flagged_total", ())] == 0

    # 4. Logs: JSON lines; the job's id in both processes; no prompt text by default.
    service.stop()  # flush and close the log files
    gateway_lines = json_lines(service.logs("gateway"))
    worker_lines = json_lines(service.logs("worker-0"))
    assert {line["component"] for line in gateway_lines} == {"gateway"}
    assert {line["component"] for line in worker_lines} == {"gpu-worker"}
    for line in gateway_lines + worker_lines:
        assert {"ts", "level", "event"} <= line.keys()
    assert any(line.get("job_id") == job["id"] for line in gateway_lines), (
        f"no gateway line carries the job id: {[line['event'] for line in gateway_lines]}"
    )
    worker_job_lines = [
        line
        for line in worker_lines
        if line.get("job_id") == job["id"] or job["id"] in (line.get("jobs") or [])
    ]
    assert worker_job_lines, "no worker line carries the job id"
    assert any(
        line.get("batch_id") == job["batch"]["id"] and line.get("worker_id")
        for line in worker_lines
    )
    assert PROMPT not in service.logs("gateway") + service.logs("worker-0")


@pytest.fixture
def own_redis():
    """A throwaway redis-server this test may stop."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server not installed")
    port = free_port()
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = Redis(port=port)
    wait_until(lambda: _pings(client), 10, "redis-server")
    yield process, f"redis://127.0.0.1:{port}/0"
    if process.poll() is None:
        process.terminate()
        process.wait(timeout=10)


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False


def test_readyz_and_metrics_when_redis_stops(own_redis, make_settings, make_api_client):
    process, url = own_redis
    settings = make_settings(redis_url=url)
    client = make_api_client(settings)
    heartbeat = {"worker_id": "w1", "queues": ["default"], "host": "test"}
    Redis.from_url(url).set(f"{settings.key_prefix}:worker:w1", json.dumps(heartbeat), ex=60)
    assert client.get("/readyz").status_code == 200

    process.terminate()
    process.wait(timeout=10)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["redis"]["ok"] is False
    assert ready.json()["checks"]["redis"]["reason"]
    scraped = client.get("/metrics")
    assert scraped.status_code == 200
    assert "gensvc_redis_up 0.0" in scraped.text
    assert client.get("/healthz").status_code == 200


def test_recording_never_raises_into_the_caller(settings):
    # No retries: redis-py would otherwise back off for seconds per call before giving up.
    dead = Redis(port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0))
    metrics.job_submitted(dead, settings, "default")
    metrics.job_finished(dead, settings, "succeeded", 1.0, 0.5)
    metrics.batch_ran(dead, settings, 2, [0.1, 0.2])
    metrics.nsfw_flagged(dead, settings, 1)
    metrics.webhook_delivery(dead, settings, "delivered")


def test_worker_process_endpoint_serves_its_own_counts(make_settings, redis):
    port = free_port()
    settings = make_settings(worker_metrics_port=port)
    metrics.batch_ran(redis, settings, 3, [0.02, 0.03])
    assert metrics.serve_process_metrics(settings) is True
    wait_until(lambda: _answers(f"http://127.0.0.1:{port}/metrics"), 10, "worker metrics endpoint")
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples["gensvc_batch_size_count"] >= 1
    assert samples["gensvc_denoise_step_seconds_count"] >= 2


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def test_submit_and_queued_cancel_are_counted_by_the_gateway(api_client, redis, settings):
    submitted = api_client.post("/v1/jobs", json={"prompt": "a seven", "steps": 2})
    assert submitted.status_code == 202, submitted.text
    assert (
        api_client.post(f"/v1/jobs/{submitted.json()['id']}/cancel").json()["status"] == "canceled"
    )
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(api_client.get("/metrics").text)
        for s in f.samples
    }
    assert samples[("gensvc_jobs_submitted_total", (("queue", "default"),))] == 1
    assert samples[("gensvc_jobs_finished_total", (("status", "canceled"),))] == 1
    assert samples[("gensvc_job_latency_seconds_count", ())] == 1
    assert samples[("gensvc_queue_depth", (("queue", "default"),))] == 0
