"""A Redis Sentinel failover while jobs run: nothing accepted is lost, clients see short 503s
with Retry-After, the worker and SSE streams reconnect by themselves."""

from __future__ import annotations

import pytest

from .failover import run_failover
from .test_sentinel import sentinel_settings


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_master_failover_loses_no_accepted_job(make_settings, sentinel_set, start_service) -> None:
    settings = sentinel_settings(
        make_settings, sentinel_set, worker_dead_after_s=5, job_timeout_s=600
    )
    service = start_service(settings, workers=1)
    run = run_failover(service.base_url, sentinel_set, settle_s=300)
    print(
        f"failover: gap {run.gap_s:.2f} s, promotion {run.promotion_s:.2f} s, 503s {run.unavailable}"
    )

    assert run.first_accept_after_kill, "no job was accepted after the failover"
    assert len(run.accepted) > 5
    assert run.lost == [], (run.errors, service.logs("worker-0")[-6000:])
    assert run.other_errors == []  # only 503s while there was no master
    assert run.retry_after <= {"1", "2", "3", "4", "5"}  # every 503 said when to retry
    assert run.followed_status == "succeeded"  # its SSE stream resumed across the failover
    assert run.gap_s < 30
    assert service.processes["worker-0"].poll() is None  # the worker rode it out
