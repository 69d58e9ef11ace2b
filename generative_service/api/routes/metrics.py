"""GET /metrics: Prometheus text format for the whole deployment (see generative_service/metrics.py)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from generative_service import metrics
from generative_service.api.deps import RedisDep, SettingsDep

router = APIRouter(tags=["health"])


# Sync on purpose: rendering reads Redis with the blocking client, so FastAPI runs it in its
# thread pool instead of on the event loop.
@router.get(
    "/metrics",
    summary="Prometheus metrics",
    description="Cluster-wide totals kept in Redis (every gateway answers the same), queue depths and live workers read now.",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {"example": 'gensvc_jobs_finished_total{status="succeeded"} 42.0\n'}
            },
            "description": "Prometheus text exposition format 0.0.4.",
        }
    },
)
def get_metrics(redis: RedisDep, settings: SettingsDep) -> Response:
    return Response(metrics.render(redis, settings), media_type=metrics.CONTENT_TYPE)
