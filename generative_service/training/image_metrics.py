"""Image-quality metrics for real SDXL weights: Fréchet distance (FID) and CLIP score.

The metric models come from local paths (no hub): a transformers `CLIPModel` directory for the
CLIP score, and any transformers vision model directory for the Fréchet features (by default the
same CLIP model's image tower, i.e. FD in CLIP space; point it at an Inception/DINOv2 checkpoint
in transformers format for the classic variants). Numbers are only comparable between runs that
use the same feature model, prompts and reference images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from generative_service.training.evaluate import frechet_distance

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ClipScorer:
    """CLIP score (Hessel et al.): 100 * max(cos(image, text), 0), from a local CLIPModel."""

    def __init__(self, path: str | Path) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(path, local_files_only=True).eval()
        self.processor = CLIPProcessor.from_pretrained(path, local_files_only=True)

    @torch.no_grad()
    def image_embeds(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        return _unit(_as_tensor(self.model.get_image_features(pixel_values=pixels)))

    @torch.no_grad()
    def text_embeds(self, prompts: list[str]) -> torch.Tensor:
        tokens = self.processor(text=prompts, return_tensors="pt", padding=True, truncation=True)
        return _unit(
            _as_tensor(
                self.model.get_text_features(
                    input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
                )
            )
        )

    def scores(self, images: list[Image.Image], prompts: list[str]) -> np.ndarray:
        """Per image, the CLIP score against its own prompt."""
        cosine = (self.image_embeds(images) * self.text_embeds(prompts)).sum(dim=-1)
        return (100.0 * cosine.clamp(min=0)).numpy()


class FeatureModel:
    """Image features for Fréchet distances from a local transformers vision model."""

    def __init__(self, path: str | Path) -> None:
        from transformers import AutoImageProcessor, AutoModel

        self.model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        self.processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)

    @torch.no_grad()
    def features(self, images: list[Image.Image], *, chunk: int = 16) -> np.ndarray:
        out = []
        for start in range(0, len(images), chunk):
            batch = [im.convert("RGB") for im in images[start : start + chunk]]
            pixels = self.processor(images=batch, return_tensors="pt")["pixel_values"]
            out.append(self._embed(pixels))
        return torch.cat(out).numpy().astype(np.float64)

    def _embed(self, pixels: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "get_image_features"):  # CLIP-like: the projected image embedding
            return _as_tensor(self.model.get_image_features(pixel_values=pixels))
        output = self.model(pixel_values=pixels)
        pooled = getattr(output, "pooler_output", None)
        if pooled is not None:
            return pooled.flatten(1)
        return output.last_hidden_state.mean(dim=1)


def fid(generated: np.ndarray, reference: np.ndarray) -> float:
    """Fréchet distance between two feature sets (needs more samples than feature dimensions to be stable)."""
    return frechet_distance(generated, reference)


def load_images(directory: str | Path, *, limit: int | None = None) -> list[Image.Image]:
    """Reference images from a directory (sorted, so the same files are used every run)."""
    paths = sorted(p for p in Path(directory).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {directory}")
    return [Image.open(p).convert("RGB") for p in paths[:limit]]


def read_prompts(path: str | Path) -> list[str]:
    """Prompt list: one per line; blank lines and `#` comments skipped."""
    lines = Path(path).read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _as_tensor(output) -> torch.Tensor:
    # transformers 5 may return a model output object from get_*_features; take its pooled tensor.
    if isinstance(output, torch.Tensor):
        return output
    return output.pooler_output


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
