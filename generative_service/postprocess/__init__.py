"""Post-processing of generated images: the NSFW safety filter and the Real-ESRGAN upscaler.

    from generative_service.postprocess import SafetyFilter, Upscaler

    safety = SafetyFilter.from_settings(settings)        # open_nsfw (+ optional nudenet), onnxruntime
    verdicts = safety.check(images)                      # one SafetyVerdict per image
    image, blurred = safety.apply(images[0], verdicts[0])  # None when the policy is "block"

    upscaler = Upscaler.from_settings(settings).load()   # load() at start: bad weights fail early
    big = upscaler.upscale(image, 4)                     # or 2 (x4 then Lanczos down)

Importing this package imports neither torch nor onnxruntime: the names below load lazily.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from generative_service.postprocess.safety import SafetyFilter, SafetyVerdict, decide, obscure
    from generative_service.postprocess.upscaler import Upscaler

_EXPORTS = {
    "SafetyFilter": "safety",
    "SafetyVerdict": "safety",
    "decide": "safety",
    "obscure": "safety",
    "Upscaler": "upscaler",
}

__all__ = ["SafetyFilter", "SafetyVerdict", "Upscaler", "decide", "obscure"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
