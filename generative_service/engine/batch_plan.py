"""One pipeline call's inputs, assembled per image from each job's own prompts, seeds and guidance.

Why batched images equal solo ones:
- each text is encoded alone (and cached), then the embeddings are concatenated;
- each image gets its own CPU `torch.Generator` seeded with `seed + i` (one shared generator
  would hand different noise to an image depending on its position in the batch);
- guidance is applied per image through `GuidanceScales` (a (B,1,1,1) tensor).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from generative_service.schemas import PreviewSpec


class GuidanceScales(float):
    """A guidance scale that is a different number for each image of the batch.

    Its float value (the smallest scale, > 1) keeps diffusers' `guidance_scale > 1` CFG switch
    working; multiplying a tensor by it multiplies image i by scale i.

    NOTE: diffusers' SDXL ControlNet pipeline uses a local `guidance_scale` variable rather than the
    `guidance_scale` property, so overriding the property alone is not enough: the value itself must
    broadcast. This works for both pipelines.
    """

    scales: tuple[float, ...]

    def __new__(cls, scales: list[float]) -> GuidanceScales:
        value = super().__new__(cls, min(scales))
        value.scales = tuple(float(scale) for scale in scales)
        return value

    def __mul__(self, other: Any) -> Any:
        if isinstance(other, torch.Tensor):
            scales = torch.tensor(self.scales, dtype=other.dtype, device=other.device)
            return scales.view(-1, *([1] * (other.dim() - 1))) * other
        return float(self) * other

    __rmul__ = __mul__

    def __reduce__(self):
        return (GuidanceScales, (list(self.scales),))


@dataclass
class BatchPlan:
    """Per-image inputs of one call plus the map from jobs to their images."""

    width: int
    height: int
    steps: int
    sampler: str
    cfg: bool
    control_type: str | None = None
    control_scale: float = 1.0
    seeds: list[int] = field(default_factory=list)
    guidance: list[float] = field(default_factory=list)
    embeds: list[torch.Tensor] = field(default_factory=list)
    pooled: list[torch.Tensor] = field(default_factory=list)
    negative_embeds: list[torch.Tensor] = field(default_factory=list)
    negative_pooled: list[torch.Tensor] = field(default_factory=list)
    control_images: list[Image.Image] = field(default_factory=list)
    control_hashes: dict[str, str] = field(default_factory=dict)
    slices: dict[str, tuple[int, int]] = field(default_factory=dict)
    previews: dict[str, PreviewSpec] = field(default_factory=dict)

    @property
    def total_images(self) -> int:
        return len(self.seeds)

    def pipeline_kwargs(self) -> dict[str, Any]:
        """Arguments of the diffusers call. Builds fresh generators: call once per pipeline call."""
        kwargs: dict[str, Any] = {
            "prompt_embeds": torch.cat(self.embeds),
            "pooled_prompt_embeds": torch.cat(self.pooled),
            "num_inference_steps": self.steps,
            "width": self.width,
            "height": self.height,
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds],
            "guidance_scale": 1.0,
        }
        if self.cfg:
            kwargs["negative_prompt_embeds"] = torch.cat(self.negative_embeds)
            kwargs["negative_pooled_prompt_embeds"] = torch.cat(self.negative_pooled)
            kwargs["guidance_scale"] = GuidanceScales(self.guidance)
        if self.control_type:
            kwargs["image"] = self.control_images
            kwargs["controlnet_conditioning_scale"] = self.control_scale
        return kwargs


def plan_batch(
    jobs: list,
    *,
    size: tuple[int, int],
    prompts,
    signature: str,
    pick_seed: Callable[[], int],
    control: Callable[[Any, tuple[int, int]], Image.Image],
) -> BatchPlan:
    """Assemble the inputs of compatible `jobs` (EngineJob) for one call of `size` (width, height)."""
    first = jobs[0].request
    plan = BatchPlan(
        width=size[0],
        height=size[1],
        steps=first.steps,
        sampler=first.sampler,
        cfg=first.uses_cfg,
        control_type=first.control.type if first.control else None,
        control_scale=first.control.conditioning_scale if first.control else 1.0,
    )
    for job in jobs:
        request = job.request
        # a long prompt and its negative must be the same number of 75-token windows
        chunks = prompts.chunk_count(request.prompt, request.negative_prompt if plan.cfg else "")
        positive = prompts.encode(request.prompt, signature=signature, chunks=chunks)
        negative = (
            prompts.encode(request.negative_prompt, signature=signature, chunks=chunks)
            if plan.cfg
            else None
        )
        seed = request.seed if request.seed is not None else pick_seed()
        conditioning = control(job, size) if request.control else None
        if request.control:
            plan.control_hashes[job.job_id] = hashlib.sha256(
                request.control.image.encode()
            ).hexdigest()
        if request.preview is not None:
            plan.previews[job.job_id] = request.preview
        start = plan.total_images
        for index in range(request.num_images):
            plan.seeds.append(seed + index)
            plan.guidance.append(request.resolved_guidance)
            plan.embeds.append(positive.embeds)
            plan.pooled.append(positive.pooled)
            if negative is not None:
                plan.negative_embeds.append(negative.embeds)
                plan.negative_pooled.append(negative.pooled)
            if conditioning is not None:
                plan.control_images.append(conditioning)
        plan.slices[job.job_id] = (start, plan.total_images)
    return plan
