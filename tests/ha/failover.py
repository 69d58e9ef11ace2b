"""A Sentinel failover under load, as a client sees it (shared by tests/ha/test_failover.py and
benchmarks/bench_failover.py; no pytest here).

Clients submit jobs all the time (each submit retried with its own Idempotency-Key while the
gateway answers 503), one long job is followed over SSE, and the Redis master is SIGKILLed.
Measured: the failover gap (kill -> first job accepted again), the 503s and their Retry-After,
and whether every accepted job ends.
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

import httpx

from .servers import SentinelSet

TERMINAL = ("succeeded", "failed", "canceled")


@dataclass
class FailoverRun:
    accepted: list[str] = field(default_factory=list)
    unavailable: int = 0  # 503 answers
    retry_after: set[str] = field(default_factory=set)
    other_errors: list[str] = field(default_factory=list)
    killed_at: float = 0.0
    promoted_at: float = 0.0  # the sentinels named the new master
    first_accept_after_kill: float = 0.0
    last_accept_before_kill: float = 0.0
    followed_status: str | None = None  # the long job, as its SSE stream ended
    final: dict[str, str] = field(default_factory=dict)
    errors: dict[str, object] = field(default_factory=dict)  # of jobs that did not succeed

    @property
    def gap_s(self) -> float:
        """Kill of the master -> the first job accepted again."""
        return self.first_accept_after_kill - self.killed_at

    @property
    def promotion_s(self) -> float:
        return self.promoted_at - self.killed_at

    @property
    def lost(self) -> list[str]:
        return [job_id for job_id in self.accepted if self.final.get(job_id) != "succeeded"]


def _submitter(
    base_url: str, run: FailoverRun, stop: threading.Event, steps: int, pause_s: float
) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as http:
        while not stop.is_set():
            key = secrets.token_hex(8)
            while not stop.is_set():
                try:
                    response = http.post(
                        "/v1/jobs",
                        json={"prompt": "a red circle", "steps": steps, "seed": 1},
                        headers={"Idempotency-Key": key},
                    )
                except httpx.HTTPError as exc:
                    run.other_errors.append(f"transport {type(exc).__name__}")
                    time.sleep(0.1)
                    continue
                if response.status_code in (200, 202):
                    now = time.monotonic()
                    run.accepted.append(response.json()["id"])
                    if run.killed_at and not run.first_accept_after_kill:
                        run.first_accept_after_kill = now
                    elif not run.killed_at:
                        run.last_accept_before_kill = now
                    break
                if response.status_code == 503:
                    run.unavailable += 1
                    run.retry_after.add(response.headers.get("retry-after", ""))
                    time.sleep(0.1)  # retried sooner than Retry-After asks: measures the gap
                    continue
                run.other_errors.append(f"HTTP {response.status_code}: {response.text[:200]}")
                break
            time.sleep(pause_s)


def _follow(base_url: str, job_id: str, run: FailoverRun, timeout_s: float) -> None:
    from generative_service.client import Client

    with Client(base_url, stream_timeout=10) as client:
        try:
            run.followed_status = str(client.wait(job_id, timeout=timeout_s).status.value)
        except Exception as exc:  # noqa: BLE001 - recorded, the test asserts on it
            run.followed_status = f"error: {exc!r}"


def run_failover(
    base_url: str, servers: SentinelSet, *, before_s: float = 3.0, after_s: float = 5.0,
    steps: int = 2, long_steps: int = 8, pause_s: float = 0.5, settle_s: float = 180.0,
) -> FailoverRun:  # fmt: skip
    """Submit under load, SIGKILL the master, keep submitting; wait until every job ended."""
    run = FailoverRun()
    http = httpx.Client(base_url=base_url, timeout=30)
    long_job = http.post("/v1/jobs", json={"prompt": "a long one", "steps": long_steps, "seed": 2})
    long_job.raise_for_status()
    run.accepted.append(long_job.json()["id"])
    follower = threading.Thread(
        target=_follow, args=(base_url, run.accepted[0], run, settle_s), daemon=True
    )
    follower.start()
    stop = threading.Event()
    submitter = threading.Thread(
        target=_submitter, args=(base_url, run, stop, steps, pause_s), daemon=True
    )
    submitter.start()
    time.sleep(before_s)
    old = servers.master()
    run.killed_at = time.monotonic()
    old.kill()
    servers.wait_for_new_master(old.port)
    run.promoted_at = time.monotonic()
    deadline = time.monotonic() + 60
    while not run.first_accept_after_kill and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(after_s)
    stop.set()
    submitter.join(timeout=60)
    deadline = time.monotonic() + settle_s
    pending = list(run.accepted)
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            try:
                body = http.get(f"/v1/jobs/{job_id}").json()
            except (httpx.HTTPError, ValueError):
                continue
            status = run.final[job_id] = body.get("status")
            if status in TERMINAL and status != "succeeded":
                run.errors[job_id] = body.get("error")
            if status in TERMINAL:
                pending.remove(job_id)
        time.sleep(0.5)
    follower.join(timeout=30)
    http.close()
    return run
