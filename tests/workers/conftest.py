"""Fixtures of the GPU worker tests: fast-liveness settings and a job helper (worker_helpers.py).

Workers are real `python -m workers.gpu_worker` subprocesses on the tiny model, started through
the shared `start_service` fixture (tests/conftest.py); most tests here talk to Redis directly
(JobStore) and start no gateway.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from redis import Redis
from worker_helpers import Jobs

from generative_service.settings import Settings


@pytest.fixture
def worker_settings(make_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with fast liveness (beat 1 s, maintenance every 1 s) and a 50 ms batch window."""

    def factory(**overrides: object) -> Settings:
        values: dict = {
            "worker_heartbeat_s": 1,
            # Generous on a loaded CI machine; the SIGKILL tests shorten it to find deaths fast.
            "worker_dead_after_s": 20,
            "worker_maintenance_s": 1,
            "batch_window_ms": 50,
            "job_timeout_s": 600,
        }
        values.update(overrides)
        return make_settings(**values)

    return factory


@pytest.fixture
def make_jobs(redis: Redis) -> Callable[[Settings], Jobs]:
    return lambda settings: Jobs(redis, settings)
