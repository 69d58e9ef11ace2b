"""What a worker holds of the engine and the post-processing models, and how it names them.

The worker loads `Engine`, `SafetyFilter` and `Upscaler` once (gpu_worker.load_worker_models) and
keeps them in `Models`. What crosses the boundary are the engine's dataclasses, `EngineJob` in,
`StepInfo` during denoising, `JobOutput` out, and the safety filter's `SafetyVerdict`.
`SafetyCheck` is the one interface with two implementations: the filter itself and the runner's
`BatchVerdicts` (the verdicts of a whole batch, computed in one call).

Only type checkers import the engine and the models from here: this module imports no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from PIL.Image import Image

    from generative_service.engine.engine import Engine
    from generative_service.postprocess.safety import SafetyFilter, SafetyVerdict
    from generative_service.postprocess.upscaler import Upscaler


class SafetyCheck(Protocol):
    """The NSFW filter as post-processing uses it: a verdict per image, then the policy."""

    def check(self, images: Sequence[Image]) -> list[SafetyVerdict]: ...

    def apply(self, image: Image, verdict: SafetyVerdict) -> tuple[Image | None, bool]: ...


@dataclass
class Models:
    """What a worker loads once and keeps: the engine, the NSFW filter, the upscaler."""

    engine: Engine
    safety: SafetyFilter
    upscaler: Upscaler
