"""Helpers shared by the engine tests (tiny model, 64x64, few steps)."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from generative_service.schemas import GenerationRequest

STEPS = 4


def req(**overrides: object) -> GenerationRequest:
    """A resolved tiny request: 64x64, few steps, fixed seed."""
    values: dict = {
        "prompt": "a photo of a cat",
        "width": 64,
        "height": 64,
        "steps": STEPS,
        "seed": 1,
        "guidance_scale": 5.0,
    }
    values.update(overrides)
    return GenerationRequest(**values)


def run_one(engine, request: GenerationRequest, job_id: str = "job", **kwargs):
    """Run one job alone and return its JobOutput."""
    from generative_service.engine import EngineJob

    return engine.run([EngineJob(job_id, request)], **kwargs)[0]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_diff(a: Image.Image, b: Image.Image) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())


def png_b64(image: Image.Image, *, data_url: bool = False) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    text = base64.b64encode(buffer.getvalue()).decode()
    return f"data:image/png;base64,{text}" if data_url else text


def control_picture(seed: int = 0, size: int = 64) -> Image.Image:
    """A picture with edges and shading: a bright disc and a bar on a gradient."""
    yy, xx = np.mgrid[0:size, 0:size]
    picture = (xx * 255 // size).astype(np.uint8)
    rng = np.random.default_rng(seed)
    cx, cy = rng.integers(size // 4, 3 * size // 4, size=2)
    picture[(xx - cx) ** 2 + (yy - cy) ** 2 < (size // 5) ** 2] = 255
    picture[size // 8 : size // 8 + 4, :] = 0
    return Image.fromarray(np.stack([picture] * 3, axis=-1))
