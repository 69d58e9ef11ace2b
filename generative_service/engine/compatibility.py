"""Which jobs may share one pipeline call. Pure python: the gateway and the worker import it.

Jobs can share a call when everything that shapes the pipeline call itself is equal: size, step
count, sampler, the LoRA set with its scales (adapters are set per call, not per sample), the
control type and conditioning scale, and whether classifier-free guidance is on. Prompts,
negative prompts, seeds, guidance values (all > 1), canny thresholds and control images may differ.
"""

from __future__ import annotations

from generative_service.schemas import GenerationRequest


def batch_key(request: GenerationRequest) -> str:
    """The compatibility key of a (resolved) request: equal keys may run in one pipeline call."""
    loras = ",".join(
        f"{spec.name}@{spec.scale:g}" for spec in sorted(request.loras, key=lambda s: s.name)
    )
    if request.control is None:
        control = "none"
    else:
        control = f"{request.control.type}@{request.control.conditioning_scale:g}"
    parts = [
        f"{request.width}x{request.height}",
        f"steps={request.steps}",
        f"sampler={request.sampler}",
        f"loras=[{loras}]",
        f"control={control}",
        f"cfg={'on' if request.uses_cfg else 'off'}",
    ]
    return "|".join(parts)


def images_in(request: GenerationRequest) -> int:
    """How many images the request adds to a batch."""
    return request.num_images
