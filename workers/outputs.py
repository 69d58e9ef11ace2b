"""After denoising: safety filter, optional upscaling, storage; the job's images and timings.

Stages run in the order the job resource shows them (`safety` -> `upscaling` -> `storing`), each
announced with a `stage` event. A cancel is checked before each stage, between images and inside
the upscaler; it raises `Interrupted`, and the caller marks the job canceled. The safety verdict is taken on the generated image; a flagged
image is blurred (or blocked: not stored, `url` null) before it is upscaled or stored. Writes are
idempotent per job and image index, so a retried job overwrites rather than duplicates.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from generative_service.engine.interrupt import CancelCheck
from generative_service.schemas import ImageInfo, NsfwVerdict, Stage, Timings
from generative_service.storage import encode_image, image_url

if TYPE_CHECKING:
    from PIL.Image import Image

    from generative_service.jobs import JobStore
    from generative_service.postprocess.upscaler import Upscaler
    from generative_service.schemas import GenerationRequest
    from generative_service.storage import Storage
    from workers.boundary import SafetyCheck


@dataclass
class StoredImages:
    """What `postprocess_and_store` produced for one job."""

    images: list[ImageInfo]
    timings: Timings
    flagged: int


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000.0, 1)


def postprocess_and_store(
    *,
    job_id: str,
    request: GenerationRequest,
    images: list[Image],
    seeds: list[int],
    inference_ms: float,
    store: JobStore,
    storage: Storage,
    safety: SafetyCheck,
    upscaler: Upscaler,
    safety_shared_ms: float = 0.0,
    is_canceled: Callable[[], bool] = lambda: False,
    cancel_read: bool = False,
) -> StoredImages:
    """Filter, upscale (when asked) and store a job's images; returns their ImageInfo entries.

    `safety_shared_ms` is the time of a filter call made once for the whole batch (added to
    every job's `safety_ms`). `cancel_read`: the caller has just read the cancel flag (the first
    check need not read it again).

    Raises:
        Interrupted: `is_canceled()` turned true; nothing more is done for the job.
    """
    timings = Timings(inference_ms=round(inference_ms, 1))
    check = CancelCheck(is_canceled)
    if cancel_read:
        check.read_just_now()

    # 1. Safety: one verdict per image; a flagged image never fails the others.
    check()
    store.set_stage(job_id, Stage.safety)
    start = time.perf_counter()
    verdicts = []
    for image in images:  # one at a time, so a cancel is seen between images
        check()
        verdicts.extend(safety.check([image]))
    shown = [safety.apply(image, verdict) for image, verdict in zip(images, verdicts, strict=True)]
    timings.safety_ms = round(_ms(start) + safety_shared_ms, 1)

    # 2. Upscaling (only when asked); blocked images are not upscaled.
    factor = request.upscale or 1
    if request.upscale:
        check()
        store.set_stage(job_id, Stage.upscaling)
        start = time.perf_counter()
        shown = [
            (
                upscaler.upscale(image, request.upscale, check=check)
                if image is not None
                else None,
                blurred,
            )
            for image, blurred in shown
        ]
        timings.upscale_ms = _ms(start)

    # 3. Storing: encode in the requested format, write atomically per index.
    check()
    store.set_stage(job_id, Stage.storing)
    start = time.perf_counter()
    infos = []
    for index, ((image, blurred), verdict, seed) in enumerate(
        zip(shown, verdicts, seeds, strict=True)
    ):
        nsfw = NsfwVerdict(flagged=bool(verdict.flagged), score=round(float(verdict.score), 4))
        content_type = f"image/{request.output_format}"
        if image is None:
            width, height = (side * factor for side in request.resolved_size)
            infos.append(
                ImageInfo(
                    index=index,
                    url=None,
                    width=width,
                    height=height,
                    seed=seed,
                    nsfw=nsfw,
                    blocked=True,
                    content_type=content_type,
                )
            )
            continue
        check()
        data, content_type = encode_image(image, request.output_format, check=check)
        storage.put(job_id, index, data, content_type)
        infos.append(
            ImageInfo(
                index=index,
                url=image_url(job_id, index),
                width=image.width,
                height=image.height,
                seed=seed,
                nsfw=nsfw,
                blurred=bool(blurred),
                content_type=content_type,
            )
        )
    timings.storing_ms = _ms(start)
    return StoredImages(
        images=infos, timings=timings, flagged=sum(1 for verdict in verdicts if verdict.flagged)
    )
