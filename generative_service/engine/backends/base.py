"""What every engine backend offers the Engine: per-call preparation and a description."""

from __future__ import annotations

import contextlib
from typing import Any


class Backend:
    """Runs the pipeline's UNet/ControlNet/VAE as they are (PyTorch eager): the default.

    Subclasses change how those modules run; the diffusers pipeline, the schedulers, the step
    callback (previews, cancel) and the per-image generators and guidance stay the same.
    """

    name = "eager"

    def __init__(self, settings, models) -> None:
        self.settings = settings
        self.models = models

    def make_loras(self, *, hasher):
        """The LoRA manager this backend's modules need (runtime peft adapters by default)."""
        from generative_service.engine.lora import LoraManager

        return LoraManager(self.models.pipe, self.settings, hasher=hasher)

    def start(self, engine) -> None:
        """Last step of the engine's start, before the worker reports ready (warm-up)."""

    def running(self):
        """Context of one pipeline call."""
        return contextlib.nullcontext()

    def prepare(self, plan, *, loras: list[dict]) -> dict[str, Any]:
        """Get ready for one pipeline call of `plan` with the active `loras`.

        Returns the backend part of the job's reproducibility record.
        """
        return {"name": self.name, "ran": self.name}

    def describe(self) -> dict[str, Any]:
        """The backend part of GET /v1/models."""
        return {"name": self.name}
