"""Wire models: the generation request, the job resource and the events. The single source of truth.

Gateway, worker, SSE and webhooks all speak these types. No torch here.
"""

from __future__ import annotations

import enum
import math
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from generative_service import rules
from generative_service.rules import MAX_IMAGES, MAX_SEED, SAMPLERS


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- Request ----------------------------------------------------------------------------------

WebhookEvent = Literal["started", "progress", "completed"]


def _completed_only() -> list[WebhookEvent]:
    return ["completed"]


class LoraSpec(_Strict):
    name: str = Field(
        min_length=1,
        max_length=rules.LORA_NAME_MAX,
        pattern=rules.LORA_NAME_PATTERN,
        description="Adapter name (file NAME.safetensors in the LoRA directory).",
    )
    scale: float = Field(1.0, ge=rules.MIN_LORA_SCALE, le=rules.MAX_LORA_SCALE, allow_inf_nan=False)


class ControlSpec(_Strict):
    type: Literal["canny", "depth"]
    image: str = Field(
        min_length=1, description="Control image: base64 or a `data:image/...;base64,` URL."
    )
    conditioning_scale: float = Field(
        0.8, ge=0.0, le=rules.MAX_CONDITIONING_SCALE, allow_inf_nan=False
    )
    canny_low: int = Field(100, ge=0, le=255, description="Canny lower hysteresis threshold.")
    canny_high: int = Field(200, ge=0, le=255, description="Canny upper hysteresis threshold.")

    @model_validator(mode="after")
    def _thresholds(self) -> ControlSpec:
        if self.canny_low > self.canny_high:
            raise ValueError("canny_low must not exceed canny_high")
        return self


class PreviewSpec(_Strict):
    every_n_steps: int = Field(1, ge=1, le=rules.MAX_PREVIEW_EVERY)
    max_px: int = Field(
        256,
        ge=rules.MIN_PREVIEW_PX,
        le=rules.MAX_PREVIEW_PX,
        description="Longer side of the preview image.",
    )


class GenerationRequest(_Strict):
    """POST /v1/jobs body. `width`/`height`/`guidance_scale`/`seed` may be null on the wire; the
    gateway fills them (the job resource shows the values used)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "prompt": "a red circle above a blue square",
                    "steps": 20,
                    "guidance_scale": 3.0,
                    "seed": 42,
                    "num_images": 2,
                },
            ]
        },
    )

    prompt: str = Field(min_length=1, max_length=rules.MAX_PROMPT_CHARS)
    negative_prompt: str = Field("", max_length=rules.MAX_PROMPT_CHARS)
    width: int | None = Field(
        None, description="Multiple of 8, 64..GENSVC_MAX_SIDE; default: the model's size."
    )
    height: int | None = Field(
        None, description="Multiple of 8, 64..GENSVC_MAX_SIDE; default: the model's size."
    )
    steps: int = Field(rules.DEFAULT_STEPS, ge=rules.MIN_STEPS, le=rules.MAX_STEPS)
    guidance_scale: float | None = Field(
        None,
        ge=rules.MIN_GUIDANCE,
        le=rules.MAX_GUIDANCE,
        allow_inf_nan=False,
        description="Classifier-free guidance; 1 or less turns it off. Default: the model's own "
        f"(`default_guidance` of GET /v1/models; {rules.DEFAULT_GUIDANCE:g} for models without one).",
    )
    sampler: str = Field(rules.DEFAULT_SAMPLER, description=f"One of {', '.join(SAMPLERS)}.")
    seed: int | None = Field(None, ge=0, lt=MAX_SEED)
    num_images: int = Field(1, ge=1, le=MAX_IMAGES)
    loras: list[LoraSpec] = Field(default_factory=list, max_length=rules.MAX_LORAS)
    control: ControlSpec | None = None
    upscale: Literal[2, 4] | None = None
    output_format: Literal["png", "jpeg", "webp"] = "png"
    preview: PreviewSpec | None = None
    webhook: str | None = Field(None, max_length=rules.MAX_WEBHOOK_URL_CHARS)
    webhook_events_filter: list[WebhookEvent] = Field(default_factory=_completed_only)
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value

    @field_validator("sampler")
    @classmethod
    def _known_sampler(cls, value: str) -> str:
        problem = rules.sampler_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("width", "height")
    @classmethod
    def _multiple_of_8(cls, value: int | None) -> int | None:
        problem = None if value is None else rules.side_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    @field_validator("loras")
    @classmethod
    def _unique_loras(cls, value: list[LoraSpec]) -> list[LoraSpec]:
        names = [item.name for item in value]
        if len(set(names)) != len(names):
            raise ValueError("each LoRA may appear once")
        return value

    @field_validator("webhook_events_filter")
    @classmethod
    def _unique_filter(cls, value: list[str]) -> list[str]:
        return sorted(set(value), key=value.index)

    @property
    def uses_cfg(self) -> bool:
        return self.resolved_guidance > 1.0

    @property
    def resolved_guidance(self) -> float:
        """guidance_scale of a resolved request: the gateway (or the engine) fills it first."""
        if self.guidance_scale is None:
            raise ValueError("the request's guidance_scale is not resolved yet")
        return self.guidance_scale

    @property
    def resolved_size(self) -> tuple[int, int]:
        """(width, height) of a resolved request: the gateway fills both before a job is queued."""
        if self.width is None or self.height is None:
            raise ValueError("the request's width and height are not resolved yet")
        return self.width, self.height


# --- Job resource --------------------------------------------------------------------------------


class JobStatus(enum.StrEnum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    canceled = "canceled"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.succeeded, JobStatus.failed, JobStatus.canceled)


class Stage(enum.StrEnum):
    queued = "queued"
    loading = "loading"
    denoising = "denoising"
    safety = "safety"
    upscaling = "upscaling"
    storing = "storing"
    done = "done"


class Progress(BaseModel):
    stage: Stage = Stage.queued
    step: int = 0
    total_steps: int = 0
    percent: float = 0.0
    eta_s: float | None = Field(
        None, description="Estimated seconds until done, from measured step times."
    )


class NsfwVerdict(BaseModel):
    flagged: bool
    score: float


class ImageInfo(BaseModel):
    index: int
    url: str | None = Field(
        description="Download URL; null when the image was blocked by the safety filter."
    )
    width: int
    height: int
    seed: int
    nsfw: NsfwVerdict | None = None
    blurred: bool = False
    blocked: bool = False
    content_type: str


class Timings(BaseModel):
    queued_ms: float | None = None
    inference_ms: float | None = None
    safety_ms: float | None = None
    upscale_ms: float | None = None
    storing_ms: float | None = None
    total_ms: float | None = None


class BatchInfo(BaseModel):
    id: str
    size: int = Field(description="Images in the pipeline call this job ran in.")
    jobs: int = Field(1, description="Jobs that shared the pipeline call.")


class JobError(BaseModel):
    code: str
    message: str


class Links(BaseModel):
    self: str
    events: str
    cancel: str
    webhooks: str


class JobResource(BaseModel):
    """What GET /v1/jobs/{id} returns."""

    id: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue: str = "default"
    queue_position: int | None = None
    attempts: int = 0
    progress: Progress = Field(default_factory=Progress)
    request: GenerationRequest
    images: list[ImageInfo] = Field(default_factory=list)
    timings: Timings = Field(default_factory=Timings)
    batch: BatchInfo | None = None
    error: JobError | None = None
    reproducibility: dict[str, Any] | None = Field(
        None, description="Every parameter plus hashes of the model files used."
    )
    links: Links


class JobList(BaseModel):
    data: list[JobResource]
    next_cursor: str | None = None


# --- Events ---------------------------------------------------------------------------------------

EventType = Literal["queued", "started", "progress", "stage", "succeeded", "failed", "canceled"]
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "canceled"})


class Event(BaseModel):
    """One job event. SSE `data:` and webhook `data` carry exactly `to_payload()`."""

    type: EventType
    job_id: str
    at: datetime = Field(default_factory=utcnow)
    position: int | None = None
    step: int | None = None
    total_steps: int | None = None
    percent: float | None = None
    preview: str | None = None
    stage: Stage | None = None
    error: JobError | None = None
    job: dict[str, Any] | None = None

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS

    def to_payload(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


def percent(step: int, total: int) -> float:
    if total <= 0:
        return 0.0
    return round(100.0 * step / total, 1)


def finite(value: float) -> bool:
    return math.isfinite(value)
