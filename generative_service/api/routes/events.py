"""GET /v1/jobs/{id}/events: the job's events as Server-Sent Events."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from generative_service.api import sse
from generative_service.api.deps import AsyncRedisDep, OwnerDep, SettingsDep, StoreDep
from generative_service.api.responses import error_responses
from generative_service.api.routes.jobs import JobId

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_SSE_EXAMPLE = (
    "retry: 2000\n"
    "id: 1763632800000-0\nevent: queued\n"
    'data: {"type":"queued","job_id":"job_5f0c3a8e2b1d4c6a9e7f1b2c","at":"2026-11-20T10:00:00Z","position":1}\n\n'
    "id: 1763632800050-0\nevent: progress\n"
    'data: {"type":"progress","job_id":"job_5f0c3a8e2b1d4c6a9e7f1b2c","at":"2026-11-20T10:00:00.05Z","step":1,"total_steps":20,"percent":5.0}\n\n'
    ": keep-alive\n"
)


@router.get(
    "/{job_id}/events",
    summary="Follow a job's events (SSE)",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "`text/event-stream`: `queued`, `started`, `progress`, `stage`, then one of `succeeded`, "
            "`failed`, `canceled` (which carries the full job), after which the stream closes. "
            "Resume with `Last-Event-ID`: nothing is lost or repeated.",
            "content": {
                "text/event-stream": {"schema": {"type": "string"}, "example": _SSE_EXAMPLE}
            },
        },
        204: {
            "description": "`Last-Event-ID` is the job's terminal event: nothing more will come "
            "(an EventSource stops reconnecting on 204)."
        },
        **error_responses(401, 404, 422, 503),
    },
)
async def job_events(
    job_id: JobId,
    store: StoreDep,
    aredis: AsyncRedisDep,
    settings: SettingsDep,
    owner: OwnerDep,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="Resume after this event id.")
    ] = None,
    last_event_id_query: Annotated[
        str | None,
        Query(
            alias="last_event_id",
            description="Same as the `Last-Event-ID` header, for clients that cannot set headers.",
        ),
    ] = None,
) -> Response:
    after = sse.resume_point(last_event_id, last_event_id_query)
    await run_in_threadpool(
        store.get, job_id, owner=owner
    )  # 404 / 401 / 503 before the stream starts
    if await sse.nothing_after(aredis, settings, job_id, after):
        return Response(status_code=204)  # the HTML standard's way to stop an EventSource
    return StreamingResponse(
        sse.stream_job_events(aredis, settings, job_id, after=after),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
