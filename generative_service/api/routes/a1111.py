"""/sdapi/v1: the AUTOMATIC1111 web UI API, for clients that speak it (webuiapi, SillyTavern, ...).

`POST /sdapi/v1/txt2img` becomes `n_iter` ordinary jobs of `batch_size` images each (same queue,
quotas, batching and safety filter) and answers when they are done, as A1111 does: base64 PNGs,
the request as `parameters` and `info`, a JSON string with every seed. LoRAs are written in the
prompt as A1111 users write them, `<lora:name:0.8>`. Auth: the `/v1` Bearer key, or HTTP Basic
(A1111's `--api-auth`) with the key as the password.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from generative_service import rules
from generative_service.api import errors, loras, submit
from generative_service.api.deps import (
    RedisDep,
    SettingsDep,
    StorageDep,
    StoreDep,
    SubmitterDep,
    _bearer,
    caller_owner,
)
from generative_service.api.responses import error_responses
from generative_service.errors import InvalidRequest, ServiceError
from generative_service.jobs import JobRecord, JobStore
from generative_service.schemas import GenerationRequest, JobStatus

PREFIX = "/sdapi/v1"
router = APIRouter(prefix=PREFIX, tags=["automatic1111"])
MAX_N_ITER = 16

# A1111 sampler name -> ours. The scheduler may also come apart ("DPM++ 2M" + scheduler "karras").
SAMPLER_NAMES = {
    "DPM++ 2M Karras": "dpmpp_2m_karras",
    "DPM++ 2M": "dpmpp_2m",
    "Euler a": "euler_a",
    "Euler": "euler",
    "DDIM": "ddim",
    "UniPC": "unipc",
}
_BY_LOWER = {name.lower(): ours for name, ours in SAMPLER_NAMES.items()} | {
    ours: ours for ours in SAMPLER_NAMES.values()
}
_LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>", re.IGNORECASE)
# Our request field -> the A1111 parameter a client wrote.
PARAM_OF = {
    "num_images": "batch_size",
    "guidance_scale": "cfg_scale",
    "sampler": "sampler_name",
    "loras": "prompt",
}


class Txt2ImgRequest(BaseModel):
    """The fields of A1111's txt2img this service acts on; every other A1111 field is accepted and
    has no effect (hires fix, restore faces, scripts, subseeds, ...)."""

    model_config = ConfigDict(extra="allow")

    prompt: str = ""
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    steps: int = 20
    cfg_scale: float = 7.0
    sampler_name: str | None = None
    sampler_index: str | None = Field(None, description="Older name of `sampler_name`.")
    scheduler: str | None = Field(None, description="`automatic` or `karras`.")
    seed: int = Field(-1, description="-1: a random seed.")
    batch_size: int = Field(1, ge=1, description="Images per job (one pipeline call).")
    n_iter: int = Field(1, ge=1, le=MAX_N_ITER, description="Jobs, one after the other's seeds.")
    send_images: bool = True
    override_settings: dict[str, Any] = Field(default_factory=dict)


class Txt2ImgResponse(BaseModel):
    images: list[str] = Field(description="Base64 PNGs, `batch_size * n_iter` of them.")
    parameters: dict[str, Any]
    info: str = Field(description="JSON string: seeds, prompts, sizes, the job ids.")


class OptionsUpdate(BaseModel):
    model_config = ConfigDict(extra="allow")

    sd_model_checkpoint: str | None = None


def a1111_error(
    status: int, code: str, message: str, details: Any, field: str | None
) -> tuple[dict, dict[str, str]]:
    """A1111's error body (`error`, `detail`, `body`, `errors`), with our code as `error`."""
    return {"error": code, "detail": message, "body": "", "errors": message}, {}


def install(app: FastAPI) -> None:
    app.include_router(router)
    errors.register_shape(app, f"{PREFIX}/", a1111_error)


_basic = HTTPBasic(
    auto_error=False, description="A1111's `--api-auth`: any user name, an API key as password."
)


async def sdapi_caller_owner(
    request: Request,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None,
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)] = None,
) -> str:
    """The caller as `/v1` sees it; HTTP Basic (A1111's `--api-auth`) carries the key as password."""
    if bearer is None and basic is not None:
        bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=basic.password)
    return caller_owner(request, bearer)


SdapiOwner = Annotated[str, Depends(sdapi_caller_owner)]


def sampler_of(body: Txt2ImgRequest) -> str:
    name = (body.sampler_name or body.sampler_index or "DPM++ 2M Karras").strip()
    ours = _BY_LOWER.get(name.lower())
    if ours == "dpmpp_2m" and (body.scheduler or "").lower() == "karras":
        ours = "dpmpp_2m_karras"
    if ours is None:
        known = ", ".join(SAMPLER_NAMES)
        raise InvalidRequest("sampler_name", f"unknown sampler {name!r}; known: {known}")
    return ours


def split_loras(prompt: str) -> tuple[str, list[dict[str, Any]]]:
    """`"a cat <lora:ink:0.8>"` -> (`"a cat"`, `[{"name": "ink", "scale": 0.8}]`)."""
    found: list[dict[str, Any]] = []
    for match in _LORA_TAG.finditer(prompt):
        name, scale = match.group(1).strip(), (match.group(2) or "").strip()
        try:
            value = float(scale) if scale else 1.0
        except ValueError:
            raise InvalidRequest(
                "prompt", f"<lora:{name}:{scale}>: the scale must be a number"
            ) from None
        found.append({"name": name, "scale": value})
    text = " ".join(_LORA_TAG.sub(" ", prompt).split())
    return text, found


def _renamed(exc: InvalidRequest) -> InvalidRequest:
    field = PARAM_OF.get(exc.field.split("[")[0].split(".")[0], exc.field)
    reason = exc.reason if field == exc.field else f"{exc.field}: {exc.reason}"
    return InvalidRequest(field, reason, details=exc.details)


def to_generation_requests(body: Txt2ImgRequest) -> list[GenerationRequest]:
    """One job per `n_iter`; job k's first seed is `seed + k * batch_size`, as in A1111."""
    prompt, lora_specs = split_loras(body.prompt)
    seed = body.seed if body.seed >= 0 else secrets.randbelow(rules.RANDOM_SEEDS)
    fields: dict[str, Any] = {
        "prompt": prompt,
        "negative_prompt": body.negative_prompt,
        "width": body.width,
        "height": body.height,
        "steps": body.steps,
        "guidance_scale": body.cfg_scale,
        "sampler": sampler_of(body),
        "num_images": body.batch_size,
        "loras": lora_specs,
        "output_format": "png",
    }
    try:
        return [
            GenerationRequest(**fields, seed=seed + k * body.batch_size) for k in range(body.n_iter)
        ]
    except ValidationError as exc:
        raise _renamed(errors.first_problem(exc)) from None


@router.post(
    "/txt2img",
    response_model=Txt2ImgResponse,
    summary="Text to image (AUTOMATIC1111 API)",
    operation_id="a1111Txt2Img",
    responses=error_responses(400, 401, 413, 422, 429, 503, 504),
)
async def txt2img(
    body: Txt2ImgRequest,
    submitter: SubmitterDep,
    settings: SettingsDep,
    storage: StorageDep,
    owner: SdapiOwner,
) -> Txt2ImgResponse:
    """Runs `n_iter` jobs and answers once all are done (at most GENSVC_COMPAT_WAIT_S)."""
    store = submitter.store
    jobs = to_generation_requests(body)
    records: list[JobRecord] = []
    try:
        for job in jobs:
            submitted = await submitter.submit(job, owner=owner)
            records.append(submitted.record)
    except InvalidRequest as exc:
        raise _renamed(exc) from None
    except ServiceError:
        for record in records:  # all or nothing: a refused n_iter leaves no half run
            await run_in_threadpool(store.cancel, record.id, owner=owner)
        raise
    await asyncio.gather(
        *(
            submit.wait_for_end(
                submitter.aredis, settings.key_prefix, record.id, settings.compat_wait_s
            )
            for record in records
        )
    )
    records = [await run_in_threadpool(store.get, record.id) for record in records]
    for record in records:
        submit.require_succeeded(record, settings)
    images: list[str] = []
    seeds: list[int] = []
    for record in records:
        for image in record.images:
            seeds.append(image.seed)
            if body.send_images and not image.blocked and image.url:
                raw, _ = await run_in_threadpool(storage.get, record.id, image.index)
                images.append(base64.b64encode(raw).decode())
    model = await run_in_threadpool(submit.served_model, submitter.redis, settings)
    info = _info(body, records[0].request, records, seeds, model)
    return Txt2ImgResponse(images=images, parameters=body.model_dump(), info=json.dumps(info))


def _info(
    body: Txt2ImgRequest,
    job: GenerationRequest,
    records: list[JobRecord],
    seeds: list[int],
    model: str,
) -> dict[str, Any]:
    count = len(seeds)
    sampler = next(name for name, ours in SAMPLER_NAMES.items() if ours == job.sampler)
    infotext = (
        f"{body.prompt}\nNegative prompt: {body.negative_prompt}\n"
        f"Steps: {job.steps}, Sampler: {sampler}, CFG scale: {job.resolved_guidance:g}, "
        f"Seed: {{seed}}, Size: {job.width}x{job.height}, Model: {model}"
    )
    return {
        "prompt": body.prompt,
        "all_prompts": [body.prompt] * count,
        "negative_prompt": body.negative_prompt,
        "all_negative_prompts": [body.negative_prompt] * count,
        "seed": seeds[0] if seeds else None,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": [-1] * count,
        "subseed_strength": 0,
        "width": job.width,
        "height": job.height,
        "sampler_name": sampler,
        "cfg_scale": job.resolved_guidance,
        "steps": job.steps,
        "batch_size": body.batch_size,
        "n_iter": body.n_iter,
        "restore_faces": False,
        "sd_model_name": model,
        "sd_model_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": None,
        "extra_generation_params": {"Lora": [lora.name for lora in job.loras]},
        "index_of_first_image": 0,
        "infotexts": [infotext.replace("{seed}", str(seed)) for seed in seeds],
        "styles": [],
        "job_timestamp": records[0].created_at.strftime("%Y%m%d%H%M%S"),
        "clip_skip": 1,
        "is_using_inpainting_conditioning": False,
        "version": "generative-service",
        "job_ids": [record.id for record in records],
    }


@router.get("/sd-models", summary="Models served (A1111)", operation_id="a1111ListModels")
def sd_models(redis: RedisDep, settings: SettingsDep, owner: SdapiOwner) -> list[dict[str, Any]]:
    model = submit.served_model(redis, settings)
    return [
        {
            "title": model,
            "model_name": model,
            "hash": None,
            "sha256": None,
            "filename": model,
            "config": None,
        }
    ]


@router.get("/samplers", summary="Samplers (A1111 names)", operation_id="a1111ListSamplers")
def samplers(owner: SdapiOwner) -> list[dict[str, Any]]:
    return [
        {"name": name, "aliases": [ours], "options": {}} for name, ours in SAMPLER_NAMES.items()
    ]


@router.get("/schedulers", summary="Schedulers (A1111)", operation_id="a1111ListSchedulers")
def schedulers(owner: SdapiOwner) -> list[dict[str, Any]]:
    return [
        {"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": None,
         "need_inner_model": None},
        {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0,
         "need_inner_model": None},
    ]  # fmt: skip


@router.get("/loras", summary="LoRA adapters (A1111)", operation_id="a1111ListLoras")
def list_loras(settings: SettingsDep, owner: SdapiOwner) -> list[dict[str, Any]]:
    return [
        {"name": lora.name, "alias": lora.name, "path": f"{lora.name}.safetensors", "metadata": {}}
        for lora in loras.list_all(settings, owner=owner)
    ]


@router.get("/scripts", summary="Scripts (A1111): none", operation_id="a1111ListScripts")
def scripts(owner: SdapiOwner) -> dict[str, list]:
    return {"txt2img": [], "img2img": []}


@router.get("/options", summary="Options (A1111)", operation_id="a1111GetOptions")
def get_options(redis: RedisDep, settings: SettingsDep, owner: SdapiOwner) -> dict[str, Any]:
    return {
        "sd_model_checkpoint": submit.served_model(redis, settings),
        "sd_checkpoint_hash": None,
        "samples_format": "png",
        "CLIP_stop_at_last_layers": 1,
    }


@router.post(
    "/options",
    summary="Set options (A1111): only the served model can be chosen",
    operation_id="a1111SetOptions",
    responses=error_responses(401, 422),
)
def set_options(
    body: OptionsUpdate, redis: RedisDep, settings: SettingsDep, owner: SdapiOwner
) -> None:
    """Accepts `sd_model_checkpoint` naming the served model; other options have no effect."""
    served = submit.served_model(redis, settings)
    if body.sd_model_checkpoint not in (None, served):
        raise InvalidRequest(
            "sd_model_checkpoint", f"{body.sd_model_checkpoint!r} is not served; served: {served}"
        )


@router.get("/progress", summary="Progress of your jobs (A1111)", operation_id="a1111GetProgress")
def progress(store: StoreDep, owner: SdapiOwner) -> dict[str, Any]:
    """The caller's running job (the newest one) and how many of its jobs are queued or running."""
    running = [store.to_resource(record) for record in _jobs(store, owner, JobStatus.running)]
    queued = _jobs(store, owner, JobStatus.queued)
    state = {
        "skipped": False,
        "interrupted": False,
        "job": running[0].id if running else "",
        "job_count": len(running) + len(queued),
        "job_timestamp": datetime.now(UTC).strftime("%Y%m%d%H%M%S"),
        "job_no": 0,
        "sampling_step": running[0].progress.step if running else 0,
        "sampling_steps": running[0].progress.total_steps if running else 0,
    }
    if not running:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                "textinfo": None}  # fmt: skip
    job = running[0]
    eta = job.progress.eta_s if job.progress.eta_s is not None else 0.0
    return {"progress": round(job.progress.percent / 100.0, 4), "eta_relative": eta,
            "state": state, "current_image": None, "textinfo": None}  # fmt: skip


def _jobs(store: JobStore, owner: str, status: JobStatus) -> list[JobRecord]:
    return store.list(owner=owner, status=status, limit=100)[0]


@router.post(
    "/interrupt", summary="Cancel your running jobs (A1111)", operation_id="a1111Interrupt"
)
def interrupt(store: StoreDep, owner: SdapiOwner) -> dict:
    for record in _jobs(store, owner, JobStatus.running):
        store.cancel(record.id, owner=owner)
    return {}
