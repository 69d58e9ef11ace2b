"""Drawing images from a bundle for evaluation: through the service's Engine, or a bare pipeline.

`open_drawer(root)` prefers `EngineDrawer` (the exact sampling path users get: schedulers, prompt
encoding, LoRA manager, Canny preprocessing); `PipelineDrawer` is the fallback for a checkout
without the engine, and only knows DPM++ 2M Karras.
"""

from __future__ import annotations

import base64
import io
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from generative_service.training import data as D
from generative_service.training.evaluate import to_gray

DEFAULT_SAMPLER = "dpmpp_2m_karras"
CHUNK = 16  # images per pipeline call (the settings' max_batch_images cap)


def _png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)).convert("RGB").save(
        buffer, "PNG"
    )
    return base64.b64encode(buffer.getvalue()).decode()


class EngineDrawer:
    """Draws through `generative_service.engine.Engine` loaded on `model` ("demo" or a bundle path)."""

    def __init__(self, model: str | Path, *, cache_dir: Path | None = None) -> None:
        from generative_service.engine import Engine
        from generative_service.engine.paths import model_root
        from generative_service.settings import Settings

        self._tmp = tempfile.TemporaryDirectory(prefix="gensvc-eval-")
        settings = Settings(model=str(model), cache_dir=cache_dir or Path(self._tmp.name))
        root = model_root(settings)
        self.settings = settings.model_copy(
            update={
                "lora_dir": root / "loras",
                "max_batch_images": CHUNK,
                "device": "cpu",
                "dtype": "float32",
            }
        )
        self.engine = Engine.from_settings(self.settings)

    def draw(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        guidance: float,
        steps: int = 20,
        sampler: str = DEFAULT_SAMPLER,
        loras: dict[str, float] | None = None,
        controls: np.ndarray | None = None,
        conditioning_scale: float = 1.0,
    ) -> np.ndarray:
        """Images for `prompts`/`seeds` (controls: source images the engine runs Canny on)."""
        from generative_service.engine import EngineJob
        from generative_service.schemas import ControlSpec, GenerationRequest, LoraSpec

        jobs = []
        for i, (prompt, seed) in enumerate(zip(prompts, seeds, strict=True)):
            control = None
            if controls is not None:
                control = ControlSpec(
                    type="canny",
                    image=_png_base64(controls[i]),
                    conditioning_scale=conditioning_scale,
                )
            request = GenerationRequest(
                prompt=prompt, width=D.IMAGE_SIZE, height=D.IMAGE_SIZE, seed=seed, steps=steps,
                guidance_scale=guidance, sampler=sampler, control=control,
                loras=[LoraSpec(name=name, scale=scale) for name, scale in (loras or {}).items()],
            )  # fmt: skip
            jobs.append(EngineJob(job_id=uuid.uuid4().hex, request=request))
        images = []
        for start in range(0, len(jobs), CHUNK):
            for output in self.engine.run(jobs[start : start + CHUNK]):
                images.extend(output.images)
        return to_gray(images)


class PipelineDrawer:
    """Draws with diffusers pipelines loaded straight from the bundle (DPM++ 2M Karras only)."""

    def __init__(self, root: Path) -> None:
        import torch
        from diffusers import ControlNetModel, StableDiffusionXLPipeline

        self.root = Path(root)
        self.pipe = StableDiffusionXLPipeline.from_pretrained(
            self.root / "pipeline", torch_dtype=torch.float32
        )
        self.pipe.set_progress_bar_config(disable=True)
        cn_dir = self.root / "controlnet-canny"
        self.controlnet = (
            ControlNetModel.from_pretrained(cn_dir, torch_dtype=torch.float32)
            if cn_dir.is_dir()
            else None
        )
        self._loaded: set[str] = set()

    def _scheduler(self, sampler: str):
        from diffusers import DPMSolverMultistepScheduler

        if sampler != DEFAULT_SAMPLER:
            raise ValueError(
                f"PipelineDrawer only knows {DEFAULT_SAMPLER}; use the Engine for {sampler}"
            )
        return DPMSolverMultistepScheduler.from_config(
            self.pipe.scheduler.config,
            algorithm_type="dpmsolver++",
            solver_order=2,
            use_karras_sigmas=True,
        )

    def _set_loras(self, loras: dict[str, float]) -> None:
        for name in loras:
            if name not in self._loaded:
                self.pipe.load_lora_weights(
                    self.root / "loras", weight_name=f"{name}.safetensors", adapter_name=name
                )
                self._loaded.add(name)
        if loras:
            self.pipe.set_adapters(list(loras), adapter_weights=list(loras.values()))
        elif self._loaded:
            self.pipe.unload_lora_weights()  # restores the base weights bit-exactly
            self._loaded.clear()

    def draw(
        self,
        prompts: list[str],
        seeds: list[int],
        *,
        guidance: float,
        steps: int = 20,
        sampler: str = DEFAULT_SAMPLER,
        loras: dict[str, float] | None = None,
        controls: np.ndarray | None = None,
        conditioning_scale: float = 1.0,
    ) -> np.ndarray:
        """Images for `prompts`/`seeds` (controls: source images, Canny is applied here)."""
        import torch
        from diffusers import StableDiffusionXLControlNetPipeline

        self._set_loras(loras or {})
        self.pipe.scheduler = self._scheduler(sampler)
        pipe, extra = self.pipe, {}
        images = []
        for start in range(0, len(prompts), CHUNK):
            chunk = slice(start, start + CHUNK)
            if controls is not None:
                pipe = StableDiffusionXLControlNetPipeline(
                    **self.pipe.components, controlnet=self.controlnet
                )
                pipe.set_progress_bar_config(disable=True)
                edges = D.canny_edges(np.asarray(controls[chunk]))
                extra = {
                    "image": [
                        Image.fromarray((e * 255).astype(np.uint8)).convert("RGB") for e in edges
                    ],
                    "controlnet_conditioning_scale": conditioning_scale,
                }
            generators = [torch.Generator().manual_seed(seed) for seed in seeds[chunk]]
            out = pipe(
                prompt=prompts[chunk],
                generator=generators,
                guidance_scale=guidance,
                num_inference_steps=steps,
                height=D.IMAGE_SIZE,
                width=D.IMAGE_SIZE,
                **extra,
            )
            images.extend(out.images)
        return to_gray(images)


def open_drawer(root: Path, *, prefer_engine: bool = True):
    """The Engine drawer when the engine is available, else the pipeline drawer."""
    if prefer_engine:
        try:
            return EngineDrawer(root)
        except (ImportError, AttributeError):
            pass
    return PipelineDrawer(root)
