"""Progress previews: the x0 latent projected linearly to RGB (no VAE: well under 1 ms).

The factors are the widely used SDXL latent-to-RGB approximation (4 latent channels -> RGB)
applied to the scaled latent the UNet works in.
"""

from __future__ import annotations

import torch
from PIL import Image

# Rows: latent channels 0..3; columns: R, G, B.
SDXL_LATENT_RGB = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_LATENT_RGB_BIAS = (0.1084, -0.0175, -0.0011)


def latent_preview(
    latent: torch.Tensor, *, max_px: int, image_size: tuple[int, int]
) -> Image.Image:
    """An RGB preview of one (4, h, w) latent whose longer side is min(max_px, image's longer side).

    Args:
        latent: the x0 estimate of one image, shape (4, h, w).
        max_px: the requested longest side of the preview.
        image_size: (width, height) of the final image, which bounds the preview size.
    """
    factors = torch.tensor(SDXL_LATENT_RGB, dtype=torch.float32)
    bias = torch.tensor(SDXL_LATENT_RGB_BIAS, dtype=torch.float32)
    rgb = torch.einsum("chw,cr->hwr", latent.detach().float().cpu()[:4], factors) + bias
    pixels = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    preview = Image.fromarray(pixels)
    width, height = image_size
    longest = min(max_px, max(width, height))
    scale = longest / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return preview.resize(size, Image.Resampling.BILINEAR)
