"""ControlNet conditioning images: decode the request's image safely, then canny edges or depth.

NOTE: the decoded size is checked against GENSVC_MAX_CONTROL_PIXELS before any pixel is decoded
(PIL reads only the header on open), so a small file that expands to gigapixels is refused cheaply.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from generative_service.errors import InvalidRequest

FIELD = "control.image"
_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)


def decode_control_image(data: str, *, max_pixels: int) -> Image.Image:
    """Decode a base64 string or `data:image/...;base64,` URL into an RGB image.

    Raises:
        InvalidRequest: (field `control.image`) not base64, not an image, or too many pixels.
    """
    payload = _DATA_URL.sub("", data.strip(), count=1)
    try:
        raw = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            FIELD, "not valid base64 (expected base64 or a data:image/...;base64, URL)"
        ) from None
    if not raw:
        raise InvalidRequest(FIELD, "empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw))
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidRequest(
                    FIELD,
                    f"image is {width}x{height} pixels; at most {max_pixels} pixels are accepted",
                )
            image.load()
            return image.convert("RGB")
    except InvalidRequest:
        raise
    except (
        UnidentifiedImageError,
        OSError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
        SyntaxError,
    ) as exc:
        raise InvalidRequest(FIELD, f"could not decode the image ({type(exc).__name__})") from None


def canny_image(image: Image.Image, *, size: tuple[int, int], low: int, high: int) -> Image.Image:
    """Canny edges (white on black, 3 channels) of `image` resized to `size` (width, height)."""
    gray = np.asarray(image.convert("L").resize(size, Image.Resampling.BICUBIC))
    edges = cv2.Canny(gray, low, high)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


class DepthEstimator:
    """A transformers depth-estimation model and its image processor, run one image at a time.

    One image per call keeps each job's depth map independent of what else is in the batch.
    """

    def __init__(self, model, processor, *, device: torch.device) -> None:
        self.model = model.eval()
        self.processor = processor
        self.device = device

    @classmethod
    def load(cls, path: str, *, device: torch.device, dtype: torch.dtype) -> DepthEstimator:
        """Load with `from_pretrained` (errors propagate; the engine maps them to ModelLoadError)."""
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        processor = AutoImageProcessor.from_pretrained(path)
        model = AutoModelForDepthEstimation.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, processor, device=device)

    @torch.inference_mode()
    def __call__(self, image: Image.Image, *, size: tuple[int, int]) -> Image.Image:
        """Depth map of `image` as a 3-channel image of `size` (width, height), near = bright."""
        inputs = self.processor(images=image, return_tensors="pt").to(self.device)
        dtype = next(self.model.parameters()).dtype
        depth = self.model(pixel_values=inputs["pixel_values"].to(dtype)).predicted_depth
        depth = depth.float().reshape(1, 1, *depth.shape[-2:])
        width, height = size
        depth = torch.nn.functional.interpolate(
            depth, size=(height, width), mode="bicubic", align_corners=False
        )[0, 0]
        low, high = depth.min(), depth.max()
        normalized = (depth - low) / (high - low) if high > low else torch.zeros_like(depth)
        pixels = (normalized * 255).round().clamp(0, 255).to(torch.uint8).cpu().numpy()
        return Image.fromarray(np.stack([pixels] * 3, axis=-1))
