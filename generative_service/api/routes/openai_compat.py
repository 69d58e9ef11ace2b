"""/openai/v1: the OpenAI Images API, for clients built on the `openai` package.

`client = OpenAI(base_url="http://HOST:PORT/openai/v1", api_key=KEY)`; `client.images.generate(...)`
becomes one ordinary job (same queue, quotas, batching and safety filter; no webhook) and the
answer waits for it. Errors are in OpenAI's shape `{"error": {"message", "type", "param", "code"}}`
with the status codes of `/v1`.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Header, Path, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from generative_service import rules
from generative_service.api import errors, submit
from generative_service.api.deps import (
    OwnerDep,
    RedisDep,
    SettingsDep,
    StorageDep,
    SubmitterDep,
)
from generative_service.api.responses import error_responses
from generative_service.errors import InvalidRequest
from generative_service.schemas import GenerationRequest

PREFIX = "/openai/v1"
router = APIRouter(prefix=PREFIX, tags=["openai"])

# OpenAI's own model names, accepted as names of the model this server serves.
OPENAI_IMAGE_MODELS = ("dall-e-2", "dall-e-3", "gpt-image-1", "gpt-image-1-mini", "gpt-image-2")
# `quality` chooses the denoising step count; None = the request's default.
QUALITY_STEPS: dict[str, int | None] = {
    "low": 15,
    "medium": None,
    "standard": None,
    "auto": None,
    "high": 50,
    "hd": 50,
    "xhigh": 80,
    "max": 80,
}
# Our request field -> the OpenAI parameter a client wrote.
PARAM_OF = {"num_images": "n", "width": "size", "height": "size", "output_format": "output_format"}


class UnknownModel(InvalidRequest):
    status_code = 404
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__("model", f"{model!r} is not served here; GET {PREFIX}/models lists it")


class ImageGenerationRequest(BaseModel):
    """`POST /openai/v1/images/generations`, as OpenAI documents it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=rules.MAX_PROMPT_CHARS)
    model: str | None = Field(
        None,
        description="The served model's id (`GET /openai/v1/models`) or an OpenAI image model name (dall-e-2, dall-e-3, gpt-image-1, ...), which means the served model.",
    )
    n: int | None = Field(1, ge=1, le=10, description="Images; at most GENSVC_MAX_BATCH_IMAGES.")
    size: str | None = Field(
        None, description="`WIDTHxHEIGHT` (multiples of 8) or `auto` (the model's size)."
    )
    response_format: Literal["b64_json", "url"] | None = Field(
        "b64_json",
        description="`b64_json` (default) or `url` (the `/v1/jobs/{id}/images/{i}` download, which needs the same API key).",
    )
    quality: Literal["low", "medium", "high", "auto", "standard", "hd", "xhigh", "max"] | None = (
        Field(
            None,
            description="Denoising steps: low 15, high/hd 50, xhigh/max 80; medium/standard/auto the default.",
        )
    )
    style: Literal["vivid", "natural"] | None = Field(None, description="Accepted; no effect.")
    output_format: Literal["png", "jpeg", "webp"] | None = None
    user: str | None = Field(
        None, max_length=256, description="Kept in the job's metadata as `openai_user`."
    )
    background: Literal["transparent", "opaque", "auto"] | None = Field(
        None, description="Accepted; no effect (images are opaque)."
    )
    moderation: Literal["low", "auto"] | None = Field(
        None, description="Accepted; the server's safety filter applies."
    )
    output_compression: int | None = Field(None, ge=0, le=100, description="Accepted; no effect.")
    stream: Literal[False] | None = Field(None, description="Streaming is not offered.")


class ImageData(BaseModel):
    b64_json: str | None = None
    url: str | None = None
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: str
    size: str


class ModelObject(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "generative-service"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelObject]


def openai_error(
    status: int, code: str, message: str, details: Any, field: str | None
) -> tuple[dict, dict[str, str]]:
    """Our error as OpenAI writes it (`type` by status, `param` the field, `code` ours).

    A failed or unfinished job says `x-should-retry: false`: the `openai` package would otherwise
    retry a 5xx and so run the job again.
    """
    if status >= 500:
        kind = "server_error"
    elif status == 429:
        kind = "rate_limit_error"
    elif status == 401:
        kind, code = "invalid_request_error", "invalid_api_key"
    else:
        kind = "invalid_request_error"
    headers = {"x-should-retry": "false"} if status in (500, 504) else {}
    return {"error": {"message": message, "type": kind, "param": field, "code": code}}, headers


def install(app: FastAPI) -> None:
    app.include_router(router)
    errors.register_shape(app, f"{PREFIX}/", openai_error)


def _renamed(exc: InvalidRequest) -> InvalidRequest:
    field = PARAM_OF.get(exc.field.split("[")[0].split(".")[0], exc.field)
    return InvalidRequest(field, exc.reason, details=exc.details)


def _size(value: str | None) -> tuple[int | None, int | None]:
    if value is None or value == "auto":
        return None, None
    width, sep, height = value.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit() and len(value) <= 11):
        raise InvalidRequest("size", f"must be WIDTHxHEIGHT (e.g. 512x512) or auto, got {value!r}")
    return int(width), int(height)


def to_generation_request(body: ImageGenerationRequest, model: str) -> GenerationRequest:
    """The job an OpenAI request asks for. Raises InvalidRequest naming the OpenAI parameter."""
    if body.model is not None and body.model not in (model, *OPENAI_IMAGE_MODELS):
        raise UnknownModel(body.model)
    width, height = _size(body.size)
    fields: dict[str, Any] = {
        "prompt": body.prompt,
        "width": width,
        "height": height,
        "num_images": body.n or 1,
        "output_format": body.output_format or "png",
    }
    steps = QUALITY_STEPS.get(body.quality or "auto")
    if steps is not None:
        fields["steps"] = steps
    if body.user:
        fields["metadata"] = {"openai_user": body.user}
    try:
        return GenerationRequest(**fields)
    except ValidationError as exc:
        raise _renamed(errors.first_problem(exc)) from None


@router.post(
    "/images/generations",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    summary="Create images (OpenAI Images API)",
    operation_id="openaiCreateImage",
    responses=error_responses(400, 401, 404, 409, 413, 422, 429, 503, 504),
)
async def create_image(
    body: ImageGenerationRequest,
    request: Request,
    submitter: SubmitterDep,
    settings: SettingsDep,
    storage: StorageDep,
    owner: OwnerDep,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> ImagesResponse:
    """Runs one job through the queue and answers once it is done (at most GENSVC_COMPAT_WAIT_S)."""
    model = await run_in_threadpool(submit.served_model, submitter.redis, settings)
    job = to_generation_request(body, model)
    try:
        submitted = await submitter.submit(
            job, owner=owner, idempotency_key=idempotency_key, wait_s=settings.compat_wait_s
        )
    except InvalidRequest as exc:
        raise _renamed(exc) from None
    record = submitted.record
    submit.require_succeeded(record, settings)
    shown = [image for image in record.images if not image.blocked and image.url]
    if not shown:
        raise InvalidRequest(
            "prompt", "every image was blocked by the safety filter", details={"job_id": record.id}
        )
    data = []
    for image in shown:
        if body.response_format == "url":
            base = settings.public_url or str(request.base_url).rstrip("/")
            data.append(ImageData(url=f"{base}/v1/jobs/{record.id}/images/{image.index}"))
        else:
            raw, _ = await run_in_threadpool(storage.get, record.id, image.index)
            data.append(ImageData(b64_json=base64.b64encode(raw).decode()))
    created = int(record.created_at.timestamp())
    size = f"{record.request.width}x{record.request.height}"
    return ImagesResponse(
        created=created, data=data, output_format=record.request.output_format, size=size
    )


@router.get(
    "/models",
    response_model=ModelList,
    summary="Models served (OpenAI Models API)",
    operation_id="openaiListModels",
    responses=error_responses(401, 503),
)
def list_models(redis: RedisDep, settings: SettingsDep, owner: OwnerDep) -> ModelList:
    return ModelList(data=[ModelObject(id=submit.served_model(redis, settings), created=0)])


@router.get(
    "/models/{model}",
    response_model=ModelObject,
    summary="Get a served model (OpenAI Models API)",
    operation_id="openaiGetModel",
    responses=error_responses(401, 404, 503),
)
def get_model(
    model: Annotated[str, Path(max_length=256)],
    redis: RedisDep,
    settings: SettingsDep,
    owner: OwnerDep,
) -> ModelObject:
    served = submit.served_model(redis, settings)
    if model != served:
        raise UnknownModel(model)
    return ModelObject(id=served, created=0)
