"""Fixtures for gateway tests (helpers live in api_helpers.py)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from api_helpers import FakeWorker
from redis import Redis

from generative_service.settings import Settings


@pytest.fixture
def fake_worker(redis: Redis, settings: Settings) -> FakeWorker:
    """Drives jobs of `settings` through the worker's JobStore transitions (no torch)."""
    return FakeWorker(redis, settings)


@pytest.fixture
def make_fake_worker(redis: Redis) -> Callable[[Settings], FakeWorker]:
    return lambda settings: FakeWorker(redis, settings)
