"""/v1/models and /v1/loras: what the workers serve, and the LoRA adapter files."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, Response, UploadFile
from fastapi import Path as PathParam
from starlette.concurrency import run_in_threadpool

import generative_service.engine.paths as paths
from generative_service import lora_scope, rules
from generative_service.api import loras
from generative_service.api.deps import OwnerDep, RedisDep, SettingsDep
from generative_service.api.responses import LoraInfo, LoraList, ModelsInfo, error_responses
from generative_service.lora_store import get_lora_store
from generative_service.settings import Settings

router = APIRouter(prefix="/v1", tags=["models"])
LoraName = Annotated[
    str, PathParam(description="Adapter name (the file is NAME.safetensors).", max_length=140)
]


def settings_info(settings: Settings) -> dict:
    """Model info derived from the settings alone, for when no worker has published its own."""
    root = paths.model_root(settings)
    controlnets = [
        kind
        for kind, override in (
            ("canny", settings.controlnet_canny),
            ("depth", settings.controlnet_depth),
        )
        if override or (root is not None and (root / f"controlnet-{kind}").is_dir())
    ]
    return {
        "base_model": settings.model,
        "controlnets": controlnets,
        "samplers": list(rules.SAMPLERS),
        "default_size": paths.default_size(settings),
        "default_steps": rules.DEFAULT_STEPS,
        "default_guidance": paths.default_guidance(settings),
        "negative_guidance": paths.negative_guidance(settings),
        "backend": {"name": settings.engine_backend},
        "limits": rules.limits(settings),
    }


@router.get(
    "/models",
    response_model=ModelsInfo,
    summary="Models served now",
    responses=error_responses(401, 503),
)
def get_models(redis: RedisDep, settings: SettingsDep, owner: OwnerDep) -> ModelsInfo:
    """What a GPU worker published at start (base model, ControlNets, samplers, limits); LoRAs are live."""
    raw = redis.get(settings.keys.models)
    try:
        published = json.loads(raw) if raw else None
    except ValueError:
        published = None
    info = {**settings_info(settings), "source": "settings"}
    if isinstance(published, dict):
        info = {**info, **published, "source": "worker"}
    info["loras"] = [
        item.name for item in lora_scope.visible(owner, get_lora_store(settings).names())
    ]
    # The request schema's default, never a bundle's own number: it is what a job without `steps` runs.
    info["default_steps"] = rules.DEFAULT_STEPS
    # The cost cap is the gateway's: it holds whatever a worker published.
    info["limits"] = {**info.get("limits", {}), "max_job_cost": settings.max_job_cost}
    info["job_cost"] = rules.job_cost_info(settings.max_job_cost)
    return ModelsInfo.model_validate(info)


@router.get(
    "/loras", response_model=LoraList, summary="List LoRA adapters", responses=error_responses(401)
)
def list_loras(settings: SettingsDep, owner: OwnerDep) -> LoraList:
    return LoraList(data=loras.list_all(settings, owner=owner))


@router.get(
    "/loras/{name}",
    response_model=LoraInfo,
    summary="Get a LoRA adapter",
    responses=error_responses(401, 404, 422),
)
def get_lora(name: LoraName, settings: SettingsDep, owner: OwnerDep) -> LoraInfo:
    return loras.info(settings, name, owner=owner)


@router.post(
    "/loras",
    status_code=201,
    response_model=LoraInfo,
    summary="Upload a LoRA adapter (multipart)",
    responses=error_responses(401, 409, 413, 422),
)
async def upload_lora_form(
    response: Response,
    redis: RedisDep,
    settings: SettingsDep,
    owner: OwnerDep,
    file: Annotated[
        UploadFile, File(description="A `NAME.safetensors` LoRA file (diffusers/peft format).")
    ],
    name: Annotated[
        str | None, Form(description="Adapter name; default: the file name without `.safetensors`.")
    ] = None,
) -> LoraInfo:
    adapter = loras.check_name(name) if name else loras.name_from_filename(file.filename)
    layers, model = await run_in_threadpool(_served_layers, redis, settings)
    saved = await loras.save(
        settings, adapter, _upload_chunks(file), owner=owner, layers=layers, model=model
    )
    response.headers["Location"] = f"/v1/loras/{adapter}"
    return saved


@router.post(
    "/loras/{name}",
    status_code=201,
    response_model=LoraInfo,
    summary="Upload a LoRA adapter (raw body)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
    responses=error_responses(401, 409, 413, 422),
)
async def upload_lora_raw(
    name: LoraName,
    request: Request,
    response: Response,
    redis: RedisDep,
    settings: SettingsDep,
    owner: OwnerDep,
) -> LoraInfo:
    """`curl --data-binary @ink.safetensors -H 'Content-Type: application/octet-stream' .../v1/loras/ink`."""
    loras.check_name(name)
    layers, model = await run_in_threadpool(_served_layers, redis, settings)
    saved = await loras.save(
        settings, name, request.stream(), owner=owner, layers=layers, model=model
    )
    response.headers["Location"] = f"/v1/loras/{name}"
    return saved


@router.delete(
    "/loras/{name}",
    status_code=204,
    response_class=Response,
    summary="Remove a LoRA adapter",
    responses=error_responses(401, 403, 404, 422),
)
def delete_lora(name: LoraName, settings: SettingsDep, owner: OwnerDep) -> Response:
    loras.delete(settings, name, owner=owner)
    return Response(status_code=204)


def _served_layers(redis, settings: Settings) -> tuple[dict | None, str]:
    """The layer shapes and name of the model the workers serve (None before any worker started:
    then only the file itself is checked, and the worker refuses a misfit at its first job)."""
    raw = redis.get(settings.keys.model_layers)
    try:
        layers = json.loads(raw) if raw else None
    except ValueError:
        layers = None
    published = redis.get(settings.keys.models)
    try:
        model = (
            json.loads(published).get("base_model", settings.model) if published else settings.model
        )
    except (ValueError, AttributeError):
        model = settings.model
    return (layers if isinstance(layers, dict) else None), str(model)


async def _upload_chunks(upload: UploadFile, size: int = 1024 * 1024):
    while chunk := await upload.read(size):
        yield chunk
