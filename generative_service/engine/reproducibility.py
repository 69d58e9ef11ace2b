"""The reproducibility record of a job: every parameter plus hashes of the model files used."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from generative_service.engine.hashing import combined
from generative_service.engine.schedulers import scheduler_record

_TEXT_PARTS = ("text_encoder/", "text_encoder_2/", "tokenizer/", "tokenizer_2/")
_PACKAGES = ("torch", "diffusers", "transformers", "peft")


def model_fingerprint(models) -> str:
    """A hash of the text encoders and tokenizers: the prompt-embedding cache key's model part."""
    files = models.files.get("model", {})
    text_files = {name: digest for name, digest in files.items() if name.startswith(_TEXT_PARTS)}
    if not text_files:  # e.g. a hub id with no local snapshot: fall back to its name
        return "source:" + models.sources.get("model", "")
    return combined(text_files)


def static_record(engine) -> dict[str, Any]:
    """The part shared by every job of this engine (computed once)."""
    cached = getattr(engine, "_static_record", None)
    if cached is not None:
        return cached
    models = engine.models
    record = {
        "model": public_ref(engine.settings.model),
        "components": {
            name: {
                "source": public_ref(models.sources[name]),
                "sha256": combined(files) if files else None,
                "files": files,
            }
            for name, files in models.files.items()
        },
        "dtype": str(models.dtype).removeprefix("torch."),
        "device": models.device.type,
        "attention": models.attention,
        "runtime": models.runtime,
        "software": {name: _version(name) for name in _PACKAGES},
    }
    engine._static_record = record
    return record


def public_ref(ref: str | None) -> str | None:
    """A model reference fit to show clients: a hub id or builtin name as is, a local directory
    as `local:<parent>/<name>` (no absolute server path; the files' hashes identify the weights)."""
    if not ref or not (ref.startswith(("/", ".", "~")) or Path(ref).is_absolute()):
        return ref
    return "local:" + "/".join(Path(ref).expanduser().parts[-2:])


def reproducibility_record(
    engine, *, job, plan, pipe, loras: list[dict], backend: dict[str, Any]
) -> dict[str, Any]:
    """Everything needed to regenerate `job`'s images."""
    request = job.request
    start, stop = plan.slices[job.job_id]
    negative_mode = "none (no CFG)"
    if plan.cfg:
        zeros = request.negative_prompt == "" and pipe.config.get(
            "force_zeros_for_empty_prompt", False
        )
        negative_mode = "zeros (force_zeros_for_empty_prompt)" if zeros else "encoded"
        if request.negative_prompt and engine.negative_guidance > 0:
            negative_mode = (
                "composable negation: e(empty) + g (e(prompt) - e(empty)) - "
                f"{engine.negative_guidance:g} g (e(negative) - e(empty))"
            )
    record = {
        **static_record(engine),
        "pipeline": type(pipe).__name__,
        "backend": backend,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "negative_conditioning": negative_mode,
        "width": plan.width,
        "height": plan.height,
        "steps": plan.steps,
        "sampler": plan.sampler,
        "scheduler": scheduler_record(pipe.scheduler),
        "guidance_scale": request.guidance_scale,
        "cfg": plan.cfg,
        "seeds": plan.seeds[start:stop],
        "noise": "one torch.Generator('cpu') per image, manual_seed(seed + i); latents drawn on CPU",
        "loras": loras,
        "control": None,
        "batch": {"images": plan.total_images, "jobs": len(plan.slices), "index": start},
    }
    if request.control is not None:
        control_name = f"controlnet_{request.control.type}"
        record["control"] = {
            "type": request.control.type,
            "conditioning_scale": request.control.conditioning_scale,
            "canny_low": request.control.canny_low if request.control.type == "canny" else None,
            "canny_high": request.control.canny_high if request.control.type == "canny" else None,
            "image_sha256": plan.control_hashes.get(job.job_id),
            "controlnet_sha256": record["components"].get(control_name, {}).get("sha256"),
        }
    return record


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None
