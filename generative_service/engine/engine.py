"""The Engine: turns a list of compatible generation jobs into images with one pipeline call.

A worker builds one Engine (`Engine.from_settings`) and keeps it. `run` executes jobs whose
`compatibility.batch_key` is equal as one SDXL (or SDXL + ControlNet) call of at most
GENSVC_MAX_BATCH_IMAGES images; each job keeps its own prompts, seeds and guidance, and its images
are the same whether it ran alone or batched.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from generative_service import rules
from generative_service.engine import paths
from generative_service.engine.backends import start_backend
from generative_service.engine.batch_plan import BatchPlan, GuidanceScales, plan_batch
from generative_service.engine.compatibility import batch_key, images_in
from generative_service.engine.hashing import FileHasher
from generative_service.engine.interrupt import (
    Interrupted,
    interrupt_points,
    unet_blocks,
    vae_decoder_blocks,
)
from generative_service.engine.loader import CONTROL_TYPES, LoadedModels, load_models
from generative_service.engine.lora import target_layers
from generative_service.engine.negation import Negation, negated, plan_negation
from generative_service.engine.previews import latent_preview
from generative_service.engine.prompts import PromptEncoder
from generative_service.engine.reproducibility import (
    model_fingerprint,
    public_ref,
    reproducibility_record,
)
from generative_service.engine.schedulers import DEFAULT_SAMPLER, Schedulers, x0_prediction
from generative_service.errors import GenerationFailed, InvalidRequest, ServiceError
from generative_service.keys import Ttl
from generative_service.rules import MAX_SEED, SAMPLERS
from generative_service.schemas import GenerationRequest
from generative_service.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class EngineJob:
    """One job to run; `request` is resolved (width/height/seed set by the gateway)."""

    job_id: str
    request: GenerationRequest


@dataclass
class StepInfo:
    """Progress of one job: `step` is 1-based, the last is `total_steps`."""

    job_id: str
    step: int
    total_steps: int
    preview: Image.Image | None


@dataclass
class JobOutput:
    """A job's result. A canceled job has `canceled=True` and no images."""

    job_id: str
    images: list[Image.Image]
    seeds: list[int]
    canceled: bool
    inference_ms: float
    reproducibility: dict[str, Any]


class _AllCanceled(Interrupted):
    """Every job of the call was canceled: raised from the step callback or a cancel point
    inside the UNet/VAE, so the pipeline call stops within one block of work."""


class Engine:
    """The diffusion engine of one worker process (thread-safe: one pipeline call at a time)."""

    def __init__(
        self, settings: Settings, models: LoadedModels, *, redis=None, hasher: FileHasher
    ) -> None:
        self.settings = settings
        self.models = models
        self.pipe = models.pipe
        self.hasher = hasher
        self.scheduler_config = dict(self.pipe.scheduler.config)
        self.schedulers = Schedulers(self.scheduler_config)
        # NOTE: the backend first: it decides how LoRA layers are held (the compile backend needs
        # fixed hot-swap slots in the UNet before compiling it).
        self.backend = start_backend(settings, models)
        self.lora_layers = target_layers(self.pipe)  # NOTE: before any adapter adds its layers
        self.loras = self.backend.make_loras(hasher=hasher)
        self.prompts = PromptEncoder(
            self.pipe,
            fingerprint=model_fingerprint(models),
            redis=redis,
            key_prefix=settings.key_prefix,
            ttl_s=Ttl.embedding(settings),
        )
        self._lock = threading.Lock()
        # The ControlNet pipelines share these module objects, so they run through the backend too.
        self.backend.start(self)

    @classmethod
    def from_settings(cls, settings: Settings, *, redis=None) -> Engine:
        """Load every model named by `settings` once.

        Raises:
            ModelLoadError: naming the GENSVC_ setting whose model is missing or broken.
        """
        started = time.perf_counter()
        hasher = FileHasher(Path(settings.cache_dir) / "file-hashes.json")
        models = load_models(settings, hasher=hasher)
        paths.seed_lora_dir(settings)
        engine = cls(settings, models, redis=redis, hasher=hasher)
        log.info(
            "engine.loaded",
            extra={
                "model": settings.model,
                "device": str(models.device),
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        return engine

    # --- public API --------------------------------------------------------------------------------

    def validate(self, request: GenerationRequest) -> None:
        """Check what only the engine knows (sizes, sampler, LoRAs, control). Raises InvalidRequest."""
        width, height = self._size(request)
        problems = {
            "width": rules.side_problem(width, self.settings.max_side),
            "height": rules.side_problem(height, self.settings.max_side),
            "sampler": rules.sampler_problem(request.sampler),
            "steps": rules.steps_problem(request.steps),
            "num_images": rules.images_problem(images_in(request), self.settings.max_batch_images),
            "seed": rules.seed_problem(request.seed),
        }
        for field, problem in problems.items():
            if problem:
                raise InvalidRequest(field, problem)
        self.loras.check_known(request.loras)
        if request.control is not None:
            if request.control.type not in self.models.control_pipes:
                available = ", ".join(self.models.control_pipes) or "none"
                raise InvalidRequest(
                    "control.type",
                    f"{request.control.type!r} ControlNet is not available with this model; available: {available}",
                )
            from generative_service.engine.control import decode_control_image

            decode_control_image(request.control.image, max_pixels=self.settings.max_control_pixels)

    def run(
        self,
        jobs: list[EngineJob],
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        is_canceled: Callable[[str], bool] | None = None,
    ) -> list[JobOutput]:
        """Run `jobs` and return one output per job, in order.

        Jobs with equal batch keys share pipeline calls of at most GENSVC_MAX_BATCH_IMAGES images
        (normally the worker passes one compatible group, giving exactly one call).

        Raises:
            InvalidRequest / LoraError: a job's input is bad (validate each job first to fail only it).
            GenerationFailed: the pipeline failed (out of memory, device error, ...).
        """
        outputs: dict[str, JobOutput] = {}
        jobs = [self._with_guidance(job) for job in jobs]
        with self._lock:
            for group in self._groups(jobs):
                for output in self._run_group(group, on_step=on_step, is_canceled=is_canceled):
                    outputs[output.job_id] = output
        return [outputs[job.job_id] for job in jobs]

    def describe(self) -> dict[str, Any]:
        """What this engine serves, for GET /v1/models."""
        info = self.models.info
        return {
            "base_model": info.get("name") or self.settings.model,
            "source": public_ref(self.models.sources.get("model")),
            "pipeline": type(self.pipe).__name__,
            "controlnets": sorted(self.models.control_pipes),
            "control_types": [kind for kind in CONTROL_TYPES if kind in self.models.control_pipes],
            "samplers": list(SAMPLERS),
            "default_sampler": DEFAULT_SAMPLER,
            "loras": self.loras.store.names(),
            "default_size": self.default_size,
            "default_steps": rules.DEFAULT_STEPS,  # what a job without `steps` runs
            "default_guidance": self.default_guidance,  # what a job without `guidance_scale` runs
            "negative_guidance": self.negative_guidance,  # 0: plain CFG negatives (negation.py)
            "prompt_hint": info.get("prompt_hint"),
            "limits": rules.limits(self.settings),
            "device": str(self.models.device),
            "dtype": str(self.models.dtype).removeprefix("torch."),
            "attention": self.models.attention,
            "runtime": self.models.runtime,
            "backend": self.backend.describe(),
            "lora_hotswap": self.settings.lora_hotswap_rank > 0,
        }

    @property
    def default_size(self) -> int:
        return paths.default_size(self.settings)

    @property
    def default_guidance(self) -> float:
        return paths.default_guidance(self.settings)

    @property
    def negative_guidance(self) -> float:
        return paths.negative_guidance(self.settings)

    # --- internals -------------------------------------------------------------------------------------

    def _with_guidance(self, job: EngineJob) -> EngineJob:
        """The job with the model's guidance when its request has none (the gateway fills it for
        the service's jobs; direct callers such as benchmarks may leave it out)."""
        if job.request.guidance_scale is not None:
            return job
        request = job.request.model_copy(update={"guidance_scale": self.default_guidance})
        return EngineJob(job.job_id, request)

    def _size(self, request: GenerationRequest) -> tuple[int, int]:
        return (request.width or self.default_size, request.height or self.default_size)

    def _groups(self, jobs: list[EngineJob]) -> list[list[EngineJob]]:
        """Split into compatible groups of at most max_batch_images images, keeping order."""
        groups: list[list[EngineJob]] = []
        open_groups: dict[str, list[EngineJob]] = {}
        for job in jobs:
            request = job.request
            negative = request.negative_prompt if request.uses_cfg else ""
            # prompts of different lengths (75-token windows) cannot share one call
            key = f"{batch_key(request)}|{self.prompts.chunk_count(request.prompt, negative)}"
            group = open_groups.get(key)
            if (
                group is None
                or sum(images_in(j.request) for j in group) + images_in(job.request)
                > self.settings.max_batch_images
            ):
                group = []
                groups.append(group)
                open_groups[key] = group
            group.append(job)
        return groups

    def _run_group(self, jobs, *, on_step, is_canceled) -> list[JobOutput]:
        canceled = {
            job.job_id for job in jobs if is_canceled is not None and is_canceled(job.job_id)
        }
        live = [job for job in jobs if job.job_id not in canceled]
        if not live:
            return [self._canceled(job, 0.0) for job in jobs]
        for job in live:
            self.validate(job.request)
        # 1. Adapters, prompts, seeds, control images for every image of the batch.
        lora_records = self.loras.activate(live[0].request.loras)
        plan = plan_batch(
            live,
            size=self._size(live[0].request),
            prompts=self.prompts,
            signature=self.loras.text_signature(),
            pick_seed=lambda: secrets.randbelow(MAX_SEED - 8),
            control=self._control_inputs,
        )
        backend_record = self.backend.prepare(plan, loras=lora_records)
        # 2. One pipeline call.
        pipe = self.models.control_pipes[plan.control_type] if plan.control_type else self.pipe
        pipe.scheduler = self.schedulers.new(plan.sampler)  # fresh per call
        negation = self._negation(plan, live)
        check = _all_canceled_check(plan, is_canceled, canceled)
        callback = self._step_callback(plan, on_step=on_step, check=check, canceled=canceled)
        started = time.perf_counter()
        with self.backend.running(), negated(pipe.unet, negation, plan.total_images):
            images = self._call(pipe, plan, callback, check=check)
        elapsed_ms = (time.perf_counter() - started) * 1000
        # 3. Split the images back to their jobs.
        outputs = []
        for job in jobs:
            if job.job_id in canceled or images is None:
                outputs.append(self._canceled(job, elapsed_ms))
                continue
            start, stop = plan.slices[job.job_id]
            record = reproducibility_record(
                self, job=job, plan=plan, pipe=pipe, loras=lora_records, backend=backend_record
            )
            outputs.append(
                JobOutput(
                    job.job_id,
                    images[start:stop],
                    plan.seeds[start:stop],
                    False,
                    elapsed_ms,
                    record,
                )
            )
        return outputs

    def _call(self, pipe, plan: BatchPlan, callback, *, check) -> list[Image.Image] | None:
        kwargs = plan.pipeline_kwargs()
        try:
            with interrupt_points(self._cancel_points(pipe), check):
                return pipe(**kwargs, callback_on_step_end=callback, output_type="pil").images
        except _AllCanceled:
            return None
        except ServiceError:
            raise
        except torch.OutOfMemoryError as exc:
            raise GenerationFailed(
                f"out of device memory for {plan.total_images} image(s) at {plan.width}x{plan.height}"
            ) from exc
        except Exception as exc:
            log.exception("engine.pipeline_failed")
            raise GenerationFailed(
                f"the diffusion pipeline failed: {type(exc).__name__}: {str(exc)[:300]}"
            ) from exc

    def _cancel_points(self, pipe) -> list:
        """Modules checked for cancel inside one step and during the VAE decode."""
        modules = vae_decoder_blocks(pipe.vae)
        if self.backend.name == "eager":  # NOTE: hooks would break a compiled or exported graph
            modules += unet_blocks(pipe.unet)
            controlnet = getattr(pipe, "controlnet", None)
            if controlnet is not None:
                modules += unet_blocks(controlnet)
        return modules

    def _step_callback(self, plan: BatchPlan, *, on_step, check, canceled: set[str]):
        def callback(pipe, index: int, timestep, tensors: dict) -> dict:
            step, total = index + 1, pipe.num_timesteps
            check()
            if on_step is None:
                return {}
            x0 = None
            for job_id, (start, _) in plan.slices.items():
                if job_id in canceled:
                    continue
                preview = None
                spec = plan.previews.get(job_id)
                if spec is not None and (step % spec.every_n_steps == 0 or step == total):
                    x0 = x0 if x0 is not None else x0_prediction(pipe.scheduler)
                    if x0 is not None:
                        preview = latent_preview(
                            x0[start], max_px=spec.max_px, image_size=(plan.width, plan.height)
                        )
                on_step(StepInfo(job_id=job_id, step=step, total_steps=total, preview=preview))
            return {}

        return callback

    def _negation(self, plan: BatchPlan, jobs: list[EngineJob]) -> Negation | None:
        """Composable negation for the images whose job has a negative prompt (see negation.py)."""
        ratio = self.negative_guidance
        if not plan.cfg or ratio <= 0:
            return None
        negated = [False] * plan.total_images
        for job in jobs:
            if job.request.negative_prompt:
                start, stop = plan.slices[job.job_id]
                negated[start:stop] = [True] * (stop - start)
        if not any(negated):
            return None
        empty = self.prompts.encode("", signature=self.loras.text_signature())
        return plan_negation(negated, plan.guidance, ratio, (empty.embeds, empty.pooled))

    def _control_inputs(self, job: EngineJob, size: tuple[int, int]) -> Image.Image:
        from generative_service.engine.control import canny_image, decode_control_image

        spec = job.request.control
        if spec is None:  # plan_batch asks only for jobs with a control image
            raise InvalidRequest("control", "this job has no control image")
        source = decode_control_image(spec.image, max_pixels=self.settings.max_control_pixels)
        if spec.type == "canny":
            return canny_image(source, size=size, low=spec.canny_low, high=spec.canny_high)
        if self.models.depth is None:  # validate() refuses depth jobs first
            raise InvalidRequest("control.type", "no depth estimator is loaded for this model")
        return self.models.depth(source, size=size)

    def _canceled(self, job: EngineJob, elapsed_ms: float) -> JobOutput:
        return JobOutput(job.job_id, [], [], True, elapsed_ms, {})


def _all_canceled_check(plan: BatchPlan, is_canceled, canceled: set[str]) -> Callable[[], None]:
    """A check that records newly canceled jobs and raises _AllCanceled once all of them are."""

    def check(*_: Any) -> None:
        if is_canceled is None:
            return
        canceled.update(
            job_id for job_id in plan.slices if job_id not in canceled and is_canceled(job_id)
        )
        if all(job_id in canceled for job_id in plan.slices):
            raise _AllCanceled()

    return check


__all__ = ["Engine", "EngineJob", "JobOutput", "StepInfo", "GuidanceScales"]
