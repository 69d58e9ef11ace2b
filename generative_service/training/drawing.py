"""Drawing images from a bundle for evaluation, through the service's Engine.

`EngineDrawer` samples on the exact path users get: schedulers, prompt encoding, LoRA manager,
Canny preprocessing.
"""

from __future__ import annotations

import base64
import io
import tempfile
import uuid
from pathlib import Path

import numpy as np
from PIL import Image

from generative_service.rules import DEFAULT_SAMPLER
from generative_service.training import data as D
from generative_service.training.evaluate import to_gray

CHUNK = 16  # images per pipeline call (the settings' max_batch_images cap)


def _png_base64(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    if image.dtype != np.uint8:  # grey floats in [0, 1]
        image = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)
    Image.fromarray(image).convert("RGB").save(buffer, "PNG")
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
        if root is None:
            raise ValueError(f"{model} is not a local model folder (its LoRAs are read from it)")
        self.engine_root = root
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
        negative_prompts: list[str] | None = None,
        rgb: bool = False,
    ) -> np.ndarray:
        """Images for `prompts`/`seeds` (controls: source images the engine runs Canny on):
        (N, H, W) grey floats in [0, 1], or with `rgb` (N, H, W, 3) uint8."""
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
            negative = negative_prompts[i] if negative_prompts else ""
            request = GenerationRequest(
                prompt=prompt, negative_prompt=negative, width=D.IMAGE_SIZE, height=D.IMAGE_SIZE, seed=seed, steps=steps,
                guidance_scale=guidance, sampler=sampler, control=control,
                loras=[LoraSpec(name=name, scale=scale) for name, scale in (loras or {}).items()],
            )  # fmt: skip
            jobs.append(EngineJob(job_id=uuid.uuid4().hex, request=request))
        images = []
        for start in range(0, len(jobs), CHUNK):
            for output in self.engine.run(jobs[start : start + CHUNK]):
                images.extend(output.images)
        if rgb:
            return np.stack([np.asarray(image.convert("RGB"), dtype=np.uint8) for image in images])
        return to_gray(images)
