"""Diffusion engine: model loading, schedulers, LoRA manager, batch execution.

NOTE: importing this package must not import torch: the gateway imports `engine.compatibility` and
`engine.paths`. Heavy names are resolved lazily on first attribute access.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "Engine": "generative_service.engine.engine",
    "EngineJob": "generative_service.engine.engine",
    "StepInfo": "generative_service.engine.engine",
    "JobOutput": "generative_service.engine.engine",
    "build_tiny": "generative_service.engine.tiny",
    "batch_key": "generative_service.engine.compatibility",
    "images_in": "generative_service.engine.compatibility",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
