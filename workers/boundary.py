"""What a worker needs of the engine and the post-processing models, as small Protocols.

The worker loads `Engine`, `SafetyFilter` and `Upscaler` once (gpu_worker.load_worker_models) and
from then on uses only what is named here. The messages that cross the boundary are the engine's
dataclasses: `EngineJob` in, `StepInfo` during denoising, `JobOutput` out; and the safety filter's
`SafetyVerdict`. Only type checkers import them from here: this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image

    from generative_service.engine.engine import EngineJob, JobOutput, StepInfo
    from generative_service.postprocess.safety import SafetyVerdict
    from generative_service.schemas import GenerationRequest

# Weight shape of every layer a LoRA can target, per pipeline part (engine.lora.target_layers).
LoraLayers = dict[str, dict[str, list[int]]]


class GenerationEngine(Protocol):
    """The diffusion engine as the worker drives it (`generative_service.engine.Engine`)."""

    lora_layers: LoraLayers

    def validate(self, request: GenerationRequest) -> None:
        """Raise a ServiceError when this engine cannot run `request`."""
        ...

    def describe(self) -> dict[str, object]:
        """What the engine serves, published for GET /v1/models."""
        ...

    def run(
        self,
        jobs: list[EngineJob],
        *,
        on_step: Callable[[StepInfo], None] | None = None,
        is_canceled: Callable[[str], bool] | None = None,
    ) -> list[JobOutput]:
        """One output per job, in order."""
        ...


class SafetyCheck(Protocol):
    """The NSFW filter (`postprocess.SafetyFilter`): a verdict per image, then the policy."""

    def check(self, images: Sequence[Image]) -> list[SafetyVerdict]: ...

    def apply(self, image: Image, verdict: SafetyVerdict) -> tuple[Image | None, bool]: ...


class ImageUpscaler(Protocol):
    """The upscaler (`postprocess.Upscaler`); `check` raises to stop it (a cancel)."""

    def upscale(
        self, image: Image, factor: int, *, check: Callable[[], None] | None = None
    ) -> Image: ...


@dataclass
class Models:
    """What a worker loads once and keeps: the engine, the NSFW filter, the upscaler."""

    engine: GenerationEngine
    safety: SafetyCheck
    upscaler: ImageUpscaler
