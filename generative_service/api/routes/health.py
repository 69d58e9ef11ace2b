"""/healthz (the process answers) and /readyz (Redis reachable and a GPU worker alive)."""

from __future__ import annotations

import json

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis import Redis
from redis.exceptions import RedisError

from generative_service.api.deps import RedisDep, SettingsDep
from generative_service.api.responses import ErrorDetail, Health, Ready, ReadyCheck
from generative_service.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="Liveness")
def healthz() -> Health:
    return Health()


def live_worker_count(redis: Redis, settings: Settings, queue: str = "default") -> int:
    """Live GPU workers (unexpired `P:worker:*` keys) that serve `queue`.

    A key whose value is JSON with a `queues` list counts only if it names the queue (logical or
    RQ name); any other value counts as serving every queue.
    """
    count = 0
    for key in redis.scan_iter(match=settings.keys.worker_pattern, count=200):
        raw = redis.get(key)
        if raw is None:
            continue
        try:
            queues = json.loads(raw).get("queues")
        except (ValueError, AttributeError):
            queues = None
        if (
            not isinstance(queues, list)
            or queue in queues
            or settings.keys.rq_queue_name(queue) in queues
        ):
            count += 1
    return count


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness",
    responses={503: {"model": Ready, "description": "Not ready; `checks` say why."}},
)
def readyz(redis: RedisDep, settings: SettingsDep) -> JSONResponse:
    checks: dict[str, ReadyCheck] = {}
    try:
        redis.ping()
        checks["redis"] = ReadyCheck(ok=True)
        live = live_worker_count(redis, settings)
        reason = None if live else "no live GPU worker serves the default queue"
        checks["workers"] = ReadyCheck(ok=live > 0, live=live, reason=reason)
    except RedisError as exc:
        checks["redis"] = ReadyCheck(ok=False, reason=f"cannot reach Redis: {exc}")
        checks["workers"] = ReadyCheck(ok=False, reason="unknown while Redis is unreachable")
    ready = all(check.ok for check in checks.values())
    body = Ready(status="ready" if ready else "not_ready", checks=checks)
    if not ready:
        reasons = "; ".join(
            f"{name}: {check.reason}" for name, check in checks.items() if not check.ok
        )
        body.error = ErrorDetail(code="unavailable", message=f"not ready: {reasons}")
    return JSONResponse(
        body.model_dump(mode="json", exclude_none=True), status_code=200 if ready else 503
    )
