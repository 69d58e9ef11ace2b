"""Submission checks that need settings or the filesystem, and the `Prefer: wait=N` wait.

The field table of DESIGN §3 is enforced by `GenerationRequest` itself; what lives here depends on
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

from redis.asyncio import Redis as AsyncRedis

import generative_service.engine.paths as paths
from generative_service import events, webhooks
from generative_service.errors import InvalidRequest
from generative_service.jobs import JobRecord, JobStore
from generative_service.schemas import ControlSpec, GenerationRequest
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


def accept(
    request: GenerationRequest,
    *,
    store: JobStore,
    settings: Settings,
    owner: str,
    idempotency_key: str | None = None,
) -> tuple[JobRecord, bool]:
    """Check and enqueue one job, as POST /v1/jobs does. Returns (record, created).

    Every surface that makes images (the jobs API, evaluation studies) submits through here, so
    each job gets the same checks, admission and queue.
    """
    models_info = _models_info(store.redis, settings.key_prefix) if request.control else {}
    check_request(request, settings, models_info)
    return store.create(request, owner=owner, idempotency_key=idempotency_key)


def _models_info(redis, prefix: str) -> dict:
    raw = redis.get(f"{prefix}:models")
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        return {}


def check_request(
    request: GenerationRequest, settings: Settings, models_info: dict | None = None
) -> None:
    """Checks that depend on configuration. Raises InvalidRequest naming the field."""
    _check_metadata(request, settings)
    _check_images(request, settings)
    if request.webhook is not None:
        webhooks.validate_url(request.webhook, settings)
    _check_loras(request, settings)
    if request.control is not None:
        _check_control(request.control, settings, models_info or {})


def _check_metadata(request: GenerationRequest, settings: Settings) -> None:
    try:
        size = len(json.dumps(request.metadata, separators=(",", ":"), allow_nan=False).encode())
    except ValueError:  # NaN/Infinity parse in Python but could not be echoed back as JSON
        raise InvalidRequest(
            "metadata", "must be plain JSON: NaN and Infinity are not JSON numbers"
        ) from None
    if size > settings.max_metadata_bytes:
        raise InvalidRequest(
            "metadata", f"must be at most {settings.max_metadata_bytes} bytes as JSON, got {size}"
        )


def _check_images(request: GenerationRequest, settings: Settings) -> None:
    if request.num_images > settings.max_batch_images:
        raise InvalidRequest(
            "num_images",
            f"must be at most {settings.max_batch_images} (GENSVC_MAX_BATCH_IMAGES), got {request.num_images}",
        )
    for field in ("width", "height"):
        value = getattr(request, field)
        if value is not None and value > settings.max_side:
            raise InvalidRequest(
                field, f"must be at most {settings.max_side} (GENSVC_MAX_SIDE), got {value}"
            )


def _check_loras(request: GenerationRequest, settings: Settings) -> None:
    if not request.loras:
        return
    known = paths.list_lora_names(settings)
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
    async with StreamHub.for_client(redis).watch(events.stream_key(prefix, job_id), after) as wake:
        while (remaining := deadline - time.monotonic()) > 0:
            wake.clear()
            for event_id, event in await events.read_async(redis, prefix, job_id, after=after):
                after = event_id
                if event.is_terminal:
                    return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout=min(remaining, WAIT_SLICE_S))
    return False
