"""/v1/jobs: submit, read, list, cancel, images, webhook attempts."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import RedirectResponse, StreamingResponse

from generative_service import webhooks
from generative_service.api import submit
from generative_service.api.deps import (
    OwnerDep,
    RedisDep,
    SettingsDep,
    StorageDep,
    StoreDep,
    aredis_of,
    store_of,
    submitter_of,
)
from generative_service.api.responses import WebhookAttempts, error_responses
from generative_service.errors import NotFound
from generative_service.schemas import GenerationRequest, JobList, JobResource, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

JobId = Annotated[
    str, Path(description="Job id, e.g. `job_0123456789abcdef01234567`.", max_length=64)
]
_RESOURCE_EXAMPLE = {
    "id": "job_5f0c3a8e2b1d4c6a9e7f1b2c",
    "status": "queued",
    "created_at": "2026-11-20T10:00:00Z",
    "queue": "default",
    "queue_position": 1,
    "attempts": 0,
    "progress": {"stage": "queued", "step": 0, "total_steps": 20, "percent": 0.0, "eta_s": 0.4},
    "request": {
        "prompt": "a red circle above a blue square",
        "negative_prompt": "",
        "width": 64,
        "height": 64,
        "steps": 20,
        "guidance_scale": 3.0,
        "sampler": "dpmpp_2m_karras",
        "seed": 42,
        "num_images": 1,
        "loras": [],
        "control": None,
        "upscale": None,
        "output_format": "png",
        "preview": None,
        "webhook": None,
        "webhook_events_filter": ["completed"],
        "metadata": {},
    },
    "images": [],
    "timings": {},
    "links": {
        "self": "/v1/jobs/job_5f0c3a8e2b1d4c6a9e7f1b2c",
        "events": "/v1/jobs/job_5f0c3a8e2b1d4c6a9e7f1b2c/events",
        "cancel": "/v1/jobs/job_5f0c3a8e2b1d4c6a9e7f1b2c/cancel",
        "webhooks": "/v1/jobs/job_5f0c3a8e2b1d4c6a9e7f1b2c/webhooks",
    },
}
_JOB_JSON = {"application/json": {"example": _RESOURCE_EXAMPLE}}


@router.post(
    "",
    status_code=202,
    response_model=JobResource,
    summary="Submit a generation job",
    responses={
        202: {"description": "Accepted; `Location` points at the job.", "content": _JOB_JSON},
        200: {
            "model": JobResource,
            "description": "Idempotent replay (same `Idempotency-Key` and body), or the job finished within `Prefer: wait=N`.",
        },
        **error_responses(400, 401, 409, 413, 422, 429, 503),
    },
)
async def submit_job(
    body: GenerationRequest,
    request: Request,
    response: Response,
    owner: OwnerDep,
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Same key and body: the same job (200). Same key, other body: 409.",
        ),
    ] = None,
    prefer: Annotated[
        str | None,
        Header(
            description="`wait=N`: wait up to N seconds (at most GENSVC_WAIT_MAX_S) and answer 200 if the job finished."
        ),
    ] = None,
) -> JobResource:
    """Validate, enqueue and answer at once (202), unless `Prefer: wait=N` asks to wait for the result."""
    submitter = submitter_of(request)  # NOTE: no dependency nodes on the hot path (deps.py)
    wait_s = submit.parse_prefer_wait(prefer, submitter.settings)
    submitted = await submitter.submit(
        body, owner=owner, idempotency_key=idempotency_key, wait_s=wait_s
    )
    record, resource = submitted.record, submitted.resource
    if submitted.waited:
        response.headers["Preference-Applied"] = f"wait={wait_s}"
    response.headers["Location"] = resource.links.self
    response.status_code = 200 if not submitted.created or record.status.is_terminal else 202
    return resource


@router.get(
    "",
    response_model=JobList,
    summary="List your jobs, newest first",
    responses=error_responses(401, 422, 503),
)
def list_jobs(
    store: StoreDep,
    settings: SettingsDep,
    owner: OwnerDep,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
    cursor: Annotated[
        str | None, Query(max_length=64, description="`next_cursor` of the previous page.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> JobList:
    records, next_cursor = store.list(owner=owner, status=status, cursor=cursor, limit=limit)
    return JobList(
        data=[store.to_resource(r, base_url=settings.public_url) for r in records],
        next_cursor=next_cursor,
    )


@router.get(
    "/{job_id}",
    response_model=JobResource,
    summary="Get a job",
    responses={200: {"content": _JOB_JSON}, **error_responses(401, 404, 503)},
)
async def get_job(job_id: JobId, request: Request, owner: OwnerDep) -> JobResource:
    store = store_of(request)  # NOTE: no dependency nodes on the hot path (deps.py)
    return await store.read_async(aredis_of(request), job_id, owner=owner)


@router.post(
    "/{job_id}/cancel",
    response_model=JobResource,
    summary="Cancel a job",
    responses={
        200: {"description": "The job is canceled (it was still queued)."},
        202: {
            "model": JobResource,
            "description": "The job is running; it stops at its next denoising step.",
        },
        **error_responses(401, 404, 409, 503),
    },
)
def cancel_job(
    job_id: JobId, response: Response, store: StoreDep, settings: SettingsDep, owner: OwnerDep
) -> JobResource:
    record = store.cancel(job_id, owner=owner)
    response.status_code = 200 if record.status.is_terminal else 202
    return store.to_resource(record, base_url=settings.public_url)


@router.get(
    "/{job_id}/images/{index}",
    summary="Download an image",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}},
            "description": "The image bytes.",
        },
        307: {
            "description": "With GENSVC_IMAGE_URLS=presigned: a time-limited object-storage URL of the image."
        },
        **error_responses(401, 404, 422, 503),
    },
)
def get_image(
    job_id: JobId,
    index: Annotated[int, Path(ge=0, le=64)],
    store: StoreDep,
    storage: StorageDep,
    owner: OwnerDep,
    settings: SettingsDep,
) -> Response:
    """Image `index` of a finished job. Blocked (NSFW policy `block`) and missing images are 404."""
    record = store.get(job_id, owner=owner)
    image = next((item for item in record.images if item.index == index), None)
    if image is None or image.blocked or image.url is None:
        state = "" if record.status.is_terminal else f" (the job is {record.status.value})"
        reason = " (blocked by the safety filter)" if image is not None and image.blocked else state
        raise NotFound(f"image {index} of job {job_id} not found{reason}")
    if settings.image_urls == "presigned":
        url = storage.presigned_url(job_id, index, settings.presigned_url_ttl_s)
        if url is not None:
            return RedirectResponse(url, status_code=307, headers={"Cache-Control": "no-store"})
    chunks, content_type, length = storage.stream(job_id, index)
    # Images never change once stored, so clients and proxies may keep them.
    return StreamingResponse(
        chunks,
        media_type=content_type,
        headers={
            "Cache-Control": "private, max-age=86400, immutable",
            "Content-Length": str(length),
        },
    )


@router.get(
    "/{job_id}/webhooks",
    response_model=WebhookAttempts,
    summary="Webhook delivery attempts",
    responses=error_responses(401, 404, 503),
)
def list_webhook_attempts(
    job_id: JobId, store: StoreDep, redis: RedisDep, settings: SettingsDep, owner: OwnerDep
) -> WebhookAttempts:
    store.get(job_id, owner=owner)
    return WebhookAttempts(data=webhooks.list_attempts(redis, settings, job_id))
