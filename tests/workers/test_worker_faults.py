"""Faults a GPU worker must survive, with real worker processes: SIGKILL mid-batch, SIGTERM
(once: finish; twice: hand back), a hung batch (watchdog), Redis restarting underneath it.

After each, every job ends in a truthful terminal state (or is back in the queue and then
finishes), and RQ's registries agree with the job records.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from redis import Redis
from worker_helpers import Jobs, free_port, wait_for


def _running(jobs: Jobs, ids: list[str]) -> bool:
    return all(jobs.get(job_id).progress.step >= 1 for job_id in ids)


def test_sigkill_mid_batch_jobs_are_retried_on_a_surviving_worker(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=1500, job_retries=1, worker_dead_after_s=8)
    jobs = make_jobs(settings)
    ids = [jobs.submit(seed=i, steps=150, width=128, height=128) for i in range(3)]
    service = start_service(settings, workers=1, gateway=False)
    wait_for(lambda: _running(jobs, ids), what="the batch to start")
    first_batch = jobs.get(ids[0]).batch.id

    service.kill("worker-0", signal.SIGKILL)
    service.start_worker("worker-1")
    records = jobs.wait_terminal(ids)

    for record in records:
        assert record.status == "succeeded", record.error
        assert record.attempts == 2 and record.batch.id != first_batch
        assert record.error is None and len(record.images) == 1
        assert jobs.event_types(record.id) == [
            "queued",
            "started",
            "queued",
            "started",
            "stage",
            "stage",
            "succeeded",
        ]
        retry_note = next(event for event in jobs.events(record.id)[2:] if event.type == "queued")
        assert retry_note.job_id == record.id
    places = jobs.registries()
    assert places["finished"] == set(ids)
    assert not places["started"] and not places["failed"] and not places["queued"]


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_sigkill_without_retries_fails_jobs_with_a_reason(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=1500, job_retries=0, worker_dead_after_s=8)
    jobs = make_jobs(settings)
    # 256 px and 150 steps: seconds of work even on a quiet machine, so the batch outlasts both
    # signals (64 px finishes within the 1.5 s between them and the test would prove nothing).
    ids = [jobs.submit(seed=i, steps=150, width=256, height=256) for i in range(2)]
    service = start_service(settings, workers=1, gateway=False)
    wait_for(lambda: _running(jobs, ids), what="the batch to start")

    service.kill("worker-0", signal.SIGKILL)
    service.start_worker("worker-1")
    records = jobs.wait_terminal(ids)

    for record in records:
        assert record.status == "failed"
        assert record.error.code == "worker_lost"
        assert record.worker_id and record.worker_id in record.error.message
        assert (
            "stopped answering" in record.error.message
            and "GENSVC_JOB_RETRIES=0" in record.error.message
        )
        assert jobs.event_types(record.id)[-1] == "failed"
    places = jobs.registries()
    assert places["failed"] == set(ids)
    assert not places["started"] and not places["queued"]


def test_sigterm_finishes_the_running_batch_then_exits(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=1500)
    jobs = make_jobs(settings)
    ids = [jobs.submit(seed=i, steps=150, width=128, height=128) for i in range(2)]
    service = start_service(settings, workers=1, gateway=False)
    wait_for(lambda: _running(jobs, ids), what="the batch to start")

    worker = service.processes["worker-0"]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=180) == 0

    records = [jobs.get(job_id) for job_id in ids]
    assert all(record.status == "succeeded" and record.attempts == 1 for record in records)
    assert service.live_worker_count() == 0  # a clean exit removes the liveness key at once
    assert jobs.registries()["finished"] == set(ids)


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_second_sigterm_hands_the_batch_back_to_the_queue(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(batch_window_ms=1500)
    jobs = make_jobs(settings)
    # 256 px and 150 steps: seconds of work even on a quiet machine, so the batch outlasts both
    # signals (64 px finishes within the 1.5 s between them and the test would prove nothing).
    ids = [jobs.submit(seed=i, steps=150, width=256, height=256) for i in range(2)]
    service = start_service(settings, workers=1, gateway=False)
    wait_for(lambda: _running(jobs, ids), what="the batch to start")

    worker = service.processes["worker-0"]
    worker.send_signal(signal.SIGTERM)
    time.sleep(1.5)  # RQ ignores a second signal within 1 s of the first
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=120) == 0

    for job_id in ids:
        record = jobs.get(job_id)
        assert record.status == "queued" and record.error.code == "retrying"
        assert "went back to the queue" in record.error.message
    places = jobs.registries()
    assert jobs.queue.get_job_ids() == ids  # back at the front, in their order
    assert not places["started"] and not places["failed"] and not places["finished"]

    service.start_worker("worker-1")
    records = jobs.wait_terminal(ids)
    assert [(record.status, record.attempts) for record in records] == [("succeeded", 2)] * 2, (
        records
    )


def test_watchdog_fails_a_hung_batch_and_exits_for_a_restart(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings(job_timeout_s=1)
    jobs = make_jobs(settings)
    service = start_service(settings, workers=1, gateway=False)
    job_id = jobs.submit(steps=150, width=256, height=256)

    worker = service.processes["worker-0"]
    assert worker.wait(timeout=120) == 70  # EX_SOFTWARE: the supervisor restarts it

    record = jobs.get(job_id)
    assert record.status == "failed" and record.error.code == "timeout"
    assert "GENSVC_JOB_TIMEOUT_S=1" in record.error.message
    assert jobs.registries()["failed"] == {job_id}


def test_worker_waits_out_a_redis_restart_and_keeps_working(
    start_service, worker_settings, private_redis
) -> None:
    settings = worker_settings(redis_url=private_redis.url)
    service = start_service(settings, workers=1, gateway=False)
    jobs = Jobs(Redis.from_url(private_redis.url), settings)
    before = jobs.submit(seed=1)
    assert jobs.wait_terminal([before])[0].status == "succeeded"

    private_redis.stop()
    time.sleep(3)
    assert service.processes["worker-0"].poll() is None  # still running, not crash-looping
    private_redis.start()

    after = jobs.submit(seed=2)
    assert jobs.wait_terminal([after])[0].status == "succeeded"
    assert jobs.get(before).status == "succeeded"  # persisted state survived the restart
    wait_for(
        lambda: service.live_worker_count() == 1, what="the worker's liveness key to come back"
    )


@pytest.fixture
def private_redis(tmp_path: Path):
    """A Redis server of our own (append-only persistence) that a test may stop and start."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = _RedisServer(port=free_port(), directory=tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class _RedisServer:
    def __init__(self, *, port: int, directory: Path) -> None:
        self.port = port
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.url = f"redis://127.0.0.1:{port}/0"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        argv = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes",
            "--dir",
            str(self.directory),
        ]
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = Redis(port=self.port)
        wait_for(lambda: _pings(client), timeout=10, what="the private Redis to start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)


def _pings(client: Redis) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001
        return False
