"""Submission checks that need settings or the filesystem, and the `Prefer: wait=N` wait.

The fixed bounds (rules.py) are enforced by `GenerationRequest` itself; what lives here depends on
configuration: metadata size, webhook destination, known LoRA names, the control image, batch size.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import re
import time
from dataclasses import dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

import generative_service.engine.paths as paths
from generative_service import events, lora_scope, redis_client, rules, webhooks
from generative_service.errors import InvalidRequest, ServerTimeout, ServiceError
from generative_service.jobs import JobStore
from generative_service.keys import Keys
from generative_service.lora_store import get_lora_store
from generative_service.record import JobRecord
from generative_service.schemas import ControlSpec, GenerationRequest, JobResource, JobStatus
from generative_service.settings import Settings

_WAIT = re.compile(r"^\s*wait\s*=\s*(\S*)\s*$", re.IGNORECASE)
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
WAIT_SLICE_S = 1.0  # re-read at least this often, should a wake-up be missed (Redis trouble)


def parse_prefer_wait(header: str | None, settings: Settings) -> int | None:
    """Seconds asked for by `Prefer: wait=N` (RFC 7240), capped at GENSVC_WAIT_MAX_S; None if absent.

    Other preferences in the header (e.g. `respond-async`) are ignored, as RFC 7240 asks.
    """
    if not header:
        return None
    for preference in header.split(","):
        match = _WAIT.match(preference.split(";")[0])
        if match is None:
            continue
        value = match.group(1).strip('"')
        if not (value.isascii() and value.isdigit()):
            raise InvalidRequest("Prefer", f"wait must be a whole number of seconds, got {value!r}")
        # NOTE: int() of a 5000-digit string raises ValueError (a 500); anything that long is "a lot".
        return min(int(value), settings.wait_max_s) if len(value) <= 9 else settings.wait_max_s
    return None


@dataclass(frozen=True)
class Submitted:
    record: JobRecord  # as it stands when the answer is made (after any wait)
    created: bool  # False: an idempotent replay of an earlier job
    waited: bool  # True: the answer waited (Prefer: wait, or a compatibility route)
    resource: JobResource  # the public resource of `record` (position and ETA filled in)


async def submit(
    body: GenerationRequest,
    *,
    store: JobStore,
    redis: Redis,
    aredis: AsyncRedis,
    settings: Settings,
    owner: str,
    idempotency_key: str | None = None,
    wait_s: float | None = None,
) -> Submitted:
    """Check, enqueue and (for `wait_s`) wait for the job to end: the one submit path of every API.

    `/v1/jobs`, `/openai/v1/images/generations` and `/sdapi/v1/txt2img` all come through here, so
    admission, quotas, idempotency and batching behave the same whichever API a client speaks.
    After a wait the job is read again, so an unfinished job is answered as it stands then.
    """
    if body.loras:
        body = await run_in_threadpool(resolve_loras, body, owner, settings)
    models_info = await run_in_threadpool(models_info_of, redis, settings) if body.control else {}
    if body.loras or body.control:  # these read the LoRA directory or decode an image header
        await run_in_threadpool(check_request, body, settings, models_info)
    else:
        check_request(body, settings, models_info)
    # One Redis round trip on the event loop's own client (JobStore.create_async).
    resource, record, created = await store.create_async(
        aredis, body, owner=owner, idempotency_key=idempotency_key
    )
    if created and settings.redis_min_replicas > 0:  # accepted only once replicas hold the job
        await run_in_threadpool(redis_client.confirm_replicated, redis, settings)
    waited = bool(wait_s) and not record.status.is_terminal
    if waited:
        await wait_for_end(aredis, settings.key_prefix, record.id, float(wait_s or 0))
        record = await store.get_async(aredis, record.id)
        resource = await store.resource_async(aredis, record)
    return Submitted(record=record, created=created, waited=waited, resource=resource)


@dataclass(frozen=True)
class Submitter:
    """`submit` bound to one app's store and clients: what every API's submit route calls."""

    store: JobStore
    redis: Redis
    aredis: AsyncRedis
    settings: Settings

    async def submit(
        self,
        body: GenerationRequest,
        *,
        owner: str,
        idempotency_key: str | None = None,
        wait_s: float | None = None,
    ) -> Submitted:
        return await submit(
            body, store=self.store, redis=self.redis, aredis=self.aredis, settings=self.settings,
            owner=owner, idempotency_key=idempotency_key, wait_s=wait_s,
        )  # fmt: skip


def models_info_of(redis: Redis, settings: Settings) -> dict:
    """What the workers published at start (`GET /v1/models`), or {} when none has."""
    raw = redis.get(settings.keys.models)
    try:
        info = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def served_model(redis: Redis, settings: Settings) -> str:
    """The base model's name as the workers published it (GENSVC_MODEL until one has)."""
    return str(models_info_of(redis, settings).get("base_model") or settings.model)


def check_request(
    request: GenerationRequest, settings: Settings, models_info: dict | None = None
) -> None:
    """Checks that depend on configuration. Raises InvalidRequest naming the field."""
    _check_metadata(request, settings)
    _check_images(request, settings)
    rules.check_job_cost(
        request, default_size=paths.default_size(settings), max_cost=settings.max_job_cost
    )
    if request.webhook is not None:
        webhooks.validate_url(request.webhook, settings)
    _check_loras(request, settings)
    if request.control is not None:
        _check_control(request.control, settings, models_info or {})


def _check_metadata(request: GenerationRequest, settings: Settings) -> None:
    depth = _depth(request.metadata)
    if depth > rules.MAX_METADATA_DEPTH:
        # NOTE: before any json.dumps/model_dump: deep nesting makes those raise (a 500).
        raise InvalidRequest(
            "metadata",
            f"must be nested at most {rules.MAX_METADATA_DEPTH} levels deep, got {depth}",
        )
    try:
        text = json.dumps(request.metadata, separators=(",", ":"), allow_nan=False)
    except ValueError:  # NaN/Infinity parse in Python but could not be echoed back as JSON
        raise InvalidRequest(
            "metadata", "must be plain JSON: NaN and Infinity are not JSON numbers"
        ) from None
    try:
        json.dumps(request.metadata, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate ("\udfff") parses from JSON but cannot be stored or echoed back.
        raise InvalidRequest(
            "metadata", "strings must be valid Unicode text (a lone surrogate escape is not)"
        ) from None
    size = len(text.encode())
    problem = rules.metadata_problem(size, settings.max_metadata_bytes)
    if problem:
        raise InvalidRequest("metadata", problem)


def _depth(value: object) -> int:
    """Nesting depth of a JSON value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            if level > rules.MAX_METADATA_DEPTH:
                return level  # deep enough to refuse; no need to walk the rest
            stack.extend(
                (child, level) for child in (item.values() if isinstance(item, dict) else item)
            )
    return deepest


def _check_images(request: GenerationRequest, settings: Settings) -> None:
    problem = rules.images_problem(request.num_images, settings.max_batch_images)
    if problem:
        raise InvalidRequest("num_images", problem)
    for field in ("width", "height"):
        value = getattr(request, field)
        problem = None if value is None else rules.side_problem(value, settings.max_side)
        if problem:
            raise InvalidRequest(field, problem)


def resolve_loras(request: GenerationRequest, owner: str, settings: Settings) -> GenerationRequest:
    """The request with each `loras[].name` as stored: `owner`'s private adapter of that name,
    else the shared one (lora_scope.py). Raises InvalidRequest for a name `owner` cannot see."""
    stored = get_lora_store(settings).names()
    specs = []
    for index, lora in enumerate(request.loras):
        found = lora_scope.resolve(owner, lora.name, stored)
        if found is None:
            known = [item.name for item in lora_scope.visible(owner, stored)]
            raise InvalidRequest(
                f"loras[{index}].name",
                f"unknown LoRA {lora.name!r}; known: {', '.join(known) or 'none installed'}",
                details={"known": known},
            )
        specs.append(lora.model_copy(update={"name": found.stored}))
    return request.model_copy(update={"loras": specs})


def _check_loras(request: GenerationRequest, settings: Settings) -> None:
    if not request.loras:
        return
    known = get_lora_store(settings).names()
    for index, lora in enumerate(request.loras):
        if lora.name not in known:
            listing = ", ".join(known) if known else "none installed"
            raise InvalidRequest(
                f"loras[{index}].name",
                f"unknown LoRA {lora.name!r}; known: {listing}",
                details={"known": known},
            )


CONTROL_FORMATS = ("PNG", "JPEG", "WEBP")


def _check_control(control: ControlSpec, settings: Settings, models_info: dict) -> None:
    available = _available_controlnets(models_info)
    if available is not None and control.type not in available:
        listing = ", ".join(sorted(available)) or "none"
        raise InvalidRequest(
            "control.type",
            f"{control.type!r} is not available on this server; available: {listing}",
        )
    raw = decode_image_data(control.image)
    from PIL import Image  # PIL only reads the header here; no pixels are decoded

    try:
        with Image.open(io.BytesIO(raw)) as image:
            if image.format not in CONTROL_FORMATS:
                raise InvalidRequest(
                    "control.image",
                    f"{image.format} images are not accepted (PNG, JPEG or WebP expected)",
                )
            width, height = image.size
            if width * height <= settings.max_control_pixels:
                _check_structure(image)
    except InvalidRequest:
        raise
    except Image.DecompressionBombError:
        raise InvalidRequest("control.image", "image is too large to decode") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for garbage input
        raise InvalidRequest(
            "control.image", "not a decodable image (PNG, JPEG or WebP expected)"
        ) from None
    if width * height > settings.max_control_pixels:
        raise InvalidRequest(
            "control.image",
            f"{width}x{height} has more than {settings.max_control_pixels} pixels (GENSVC_MAX_CONTROL_PIXELS)",
        )


def _check_structure(image) -> None:
    """Walk the file's chunks without decoding pixels (PNG: every CRC), so a truncated or corrupt
    upload is a 422 at submit instead of a failed job later. Formats PIL cannot verify pass."""
    try:
        image.verify()
    except Exception:  # noqa: BLE001 - PIL raises OSError/SyntaxError/struct.error for broken files
        raise InvalidRequest("control.image", "the image file is truncated or corrupt") from None


def decode_image_data(value: str) -> bytes:
    """Bytes of a base64 string or `data:image/...;base64,` URL. Raises InvalidRequest('control.image')."""
    payload = _DATA_URL.sub("", value.strip(), count=1)
    if payload.startswith("data:"):
        raise InvalidRequest("control.image", "data URL must be data:image/...;base64,...")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest("control.image", "not valid base64") from None


def _available_controlnets(models_info: dict) -> set[str] | None:
    """Control types the workers published, or None when unknown (then the worker decides)."""
    value = models_info.get("controlnets")
    if isinstance(value, dict):
        return {str(key) for key in value}
    if isinstance(value, list):
        return {
            item if isinstance(item, str) else str(item.get("type", ""))
            for item in value
            if isinstance(item, (str, dict))
        }
    return None


async def wait_for_end(redis: AsyncRedis, prefix: str, job_id: str, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the job's terminal event. True when it arrived.

    Holds no Redis connection while waiting: the process's StreamHub wakes it (see sse.py).
    """
    from generative_service.api.stream_hub import StreamHub

    deadline = time.monotonic() + timeout_s
    after = "0-0"
    async with StreamHub.for_client(redis).watch(Keys(prefix).events(job_id), after) as wake:
        while (remaining := deadline - time.monotonic()) > 0:
            wake.clear()
            for event_id, event in await events.read_async(redis, prefix, job_id, after=after):
                after = event_id
                if event.is_terminal:
                    return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(remaining, WAIT_SLICE_S))
    return False


def require_succeeded(record: JobRecord, settings: Settings) -> None:
    """For the APIs that answer with the images: raise unless the job succeeded.

    Raises:
        ServerTimeout: (504) it still runs after GENSVC_COMPAT_WAIT_S.
        ServiceError: (500) it failed or was canceled; the job's own error code.
    """
    if record.status == JobStatus.succeeded:
        return
    if not record.status.is_terminal:
        raise ServerTimeout(
            f"job {record.id} is still {record.status.value} after {settings.compat_wait_s:g} s (GENSVC_COMPAT_WAIT_S); GET /v1/jobs/{record.id} follows it",
            details={"job_id": record.id},
        )
    reason = record.error.message if record.error else record.status.value
    error = ServiceError(
        f"job {record.id} {record.status.value}: {reason}", details={"job_id": record.id}
    )
    error.code = record.error.code if record.error else record.status.value
    raise error
