"""One real service (gateway + one GPU worker on the tiny model) shared by the page tests."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator

import pytest
from services import RunningService, child_env, cleanup_prefix
from support import free_port

from generative_service.settings import Settings

API_KEY = "browser-key"


@pytest.fixture(scope="module")
def web_service(redis, redis_url, model_cache_dir, tmp_path_factory) -> Iterator[RunningService]:
    root = tmp_path_factory.mktemp("web")
    settings = Settings(
        redis_url=redis_url,
        key_prefix=f"t_web_{secrets.token_hex(4)}",
        storage_dir=root / "images",
        cache_dir=model_cache_dir,
        lora_dir=root / "loras",
        model="tiny",
        api_keys=[API_KEY],
        worker_heartbeat_s=1,
        worker_dead_after_s=5,
        sse_keepalive_s=0.5,
        job_timeout_s=120,
    )
    (root / "logs").mkdir()
    service = RunningService(settings=settings, env=child_env(settings), log_dir=root / "logs")
    port = free_port()
    service.base_url = f"http://127.0.0.1:{port}"
    try:
        service.start(
            "gateway", [sys.executable, "-m", "generative_service.cli", "api", "--port", str(port)]
        )
        service.start_worker()
        service.wait_for_gateway()
        service.wait_for_workers(1)
        yield service
    finally:
        service.stop()
        cleanup_prefix(redis, settings.key_prefix)
