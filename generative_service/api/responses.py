"""Response bodies that only the gateway speaks (errors, health, LoRA files, model info).

The job resource, job list and events live in `generative_service.schemas`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from generative_service import rules


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Machine-readable error code, e.g. `invalid_request`, `not_found`, `queue_full`."
    )
    message: str = Field(
        description="What went wrong; for bad input it starts with the field name."
    )
    details: Any = Field(
        None,
        description="Extra data: the list of field errors, known LoRA names, Retry-After seconds...",
    )


class ErrorResponse(BaseModel):
    """Every error the API returns has this shape."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {
                        "code": "invalid_request",
                        "message": "width: must be a multiple of 8, got 65",
                        "details": [
                            {
                                "field": "width",
                                "message": "must be a multiple of 8, got 65",
                                "type": "value_error",
                            }
                        ],
                    }
                }
            ]
        }
    )

    error: ErrorDetail


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries documenting the error shape for `codes`."""
    descriptions = {
        400: "Malformed request (invalid JSON, bad header).",
        401: "Missing or wrong `Authorization: Bearer` API key.",
        403: "Not allowed: a shared adapter only admin keys (GENSVC_ADMIN_KEYS) may change.",
        404: "Unknown job, image or adapter (another key's job is unknown too).",
        409: "Conflict: Idempotency-Key reused with another body, job already ended, adapter exists.",
        413: "Request body too large.",
        422: "Invalid field; the message names it.",
        429: "Queue full; retry after `Retry-After` seconds.",
        503: "Redis or workers unavailable.",
    }
    return {
        code: {"model": ErrorResponse, "description": descriptions.get(code, "Error.")}
        for code in codes
    }


class WebhookAttempts(BaseModel):
    data: list[dict[str, Any]] = Field(description="Delivery attempts, oldest first.")


class LoraInfo(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"name": "ink", "size_bytes": 98304}]}
    )

    name: str = Field(description="Adapter name; use it in a request's `loras[].name`.")
    size_bytes: int | None = None
    scope: Literal["shared", "private"] | None = Field(
        None,
        description="`shared`: the operator's, usable by every key; `private`: this key's own upload.",
    )
    sha256: str | None = Field(
        None,
        description="Content hash of the current version (known for adapters in object storage and fresh uploads).",
    )


class LoraList(BaseModel):
    data: list[LoraInfo]


class ModelsInfo(BaseModel):
    """What the workers serve now (published by a GPU worker), or what the settings say when none has."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "source": "worker",
                    "base_model": "demo",
                    "controlnets": ["canny", "depth"],
                    "samplers": list(rules.SAMPLERS),
                    "loras": ["ink"],
                    "default_size": 64,
                    "default_steps": rules.DEFAULT_STEPS,
                    "default_guidance": 3.0,
                    "limits": {
                        "max_side": 2048,
                        "max_batch_images": 4,
                        "max_images_per_job": 4,
                        "max_steps": rules.MAX_STEPS,
                    },
                }
            ]
        },
    )

    source: str = Field(
        description="`worker` (published by a running GPU worker) or `settings` (no worker has published yet)."
    )
    base_model: str
    controlnets: list[str] = []
    samplers: list[str] = []
    loras: list[str] = []
    default_size: int | None = None
    default_steps: int = Field(
        rules.DEFAULT_STEPS, description="Denoising steps a job without `steps` runs."
    )
    default_guidance: float = Field(
        rules.DEFAULT_GUIDANCE,
        description="Guidance scale a job without `guidance_scale` runs (the model's own when its bundle names one).",
    )
    negative_guidance: float = Field(
        0.0,
        description="How strongly a negative prompt takes its concept away, as a multiple of the job's guidance scale (composable negation); 0 = plain classifier-free guidance, the negative prompt standing in for the unconditional branch.",
    )
    limits: dict[str, Any] = {}
    backend: dict[str, Any] | None = Field(
        None,
        description="How the worker runs the model: `name` (`eager`, `compile`, `onnxruntime`) and its details (execution provider, graph keys, compiled shapes).",
    )


class Health(BaseModel):
    status: str = "ok"


class ReadyCheck(BaseModel):
    ok: bool
    reason: str | None = None
    live: int | None = Field(None, description="Live GPU workers serving the default queue.")


class Ready(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "status": "ready",
                    "checks": {"redis": {"ok": True}, "workers": {"ok": True, "live": 1}},
                }
            ]
        }
    )

    status: str = Field(description="`ready` or `not_ready`.")
    checks: dict[str, ReadyCheck]
    error: ErrorDetail | None = Field(
        None, description="Present when not ready (503), in the common error shape."
    )
