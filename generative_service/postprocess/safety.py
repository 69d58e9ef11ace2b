"""NSFW safety filter: per-image verdicts, and blur / block / off policies.

Decision rule (`decide`), per image, with T = `GENSVC_NSFW_THRESHOLD` (default 0.8):

1. open_nsfw: flagged when P(nsfw) >= T.
2. nudenet (only with `GENSVC_NSFW_DETECTOR=opennsfw+nudenet`); only "exposed" labels count:
   - `FEMALE_GENITALIA_EXPOSED`, `MALE_GENITALIA_EXPOSED`, `ANUS_EXPOSED` flag the image on their
     own at a detection score >= 0.6 (`NUDENET_SOLO_SCORE`);
   - `FEMALE_BREAST_EXPOSED`, `BUTTOCKS_EXPOSED` at >= 0.5 (`NUDENET_CORROBORATED_SCORE`) flag it
     only if open_nsfw agrees at least half-way (P(nsfw) >= T / 2). Alone they misfire on safe
     images (scikit-image's `colorwheel` is BUTTOCKS_EXPOSED 0.85 at P(nsfw) 0.004);
   - every other label (faces, feet, belly, armpits, covered parts, male breast) never counts.
The verdict's `score` is always the open_nsfw P(nsfw); `details` names the model and label that
decided (`reason`) and lists the counted nudenet detections.

Policies (`GENSVC_SAFETY_POLICY`): `blur` (default) returns a flagged image so blurred that nothing
in it is recognisable; `block` withholds it (None); `off` never alters an image but still reports
the verdict (report-only). Every image is judged and treated on its own: a flagged image never
changes what happens to its batch-mates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from PIL import Image, ImageFilter

from generative_service.postprocess.nsfw_models import Detection, NudeNet, OpenNsfw, onnx_providers
from generative_service.settings import Settings

NUDENET_SOLO_LABELS = frozenset(
    {"FEMALE_GENITALIA_EXPOSED", "MALE_GENITALIA_EXPOSED", "ANUS_EXPOSED"}
)
NUDENET_CORROBORATED_LABELS = frozenset({"FEMALE_BREAST_EXPOSED", "BUTTOCKS_EXPOSED"})
NUDENET_SOLO_SCORE = 0.6
NUDENET_CORROBORATED_SCORE = 0.5
CORROBORATION_FRACTION = 0.5
# The blur keeps only an 8-pixel-wide colour layout of the image, then smooths it.
BLUR_CELLS = 8

Policy = Literal["blur", "block", "off"]


@dataclass(frozen=True)
class SafetyVerdict:
    """One image's verdict: `flagged`, the open_nsfw P(nsfw) `score`, and why (`details`)."""

    flagged: bool
    score: float
    details: dict[str, Any] = field(default_factory=dict)


def decide(
    opennsfw_score: float, detections: Sequence[Detection] | None, *, threshold: float
) -> SafetyVerdict:
    """Apply the documented decision rule to one image's model outputs.

    Args:
        opennsfw_score: open_nsfw P(nsfw) in [0, 1].
        detections: nudenet detections, or None when nudenet is not enabled.
        threshold: `GENSVC_NSFW_THRESHOLD`.
    """
    details: dict[str, Any] = {
        "opennsfw": round(opennsfw_score, 6),
        "threshold": threshold,
        "reason": None,
    }
    reasons = []
    if opennsfw_score >= threshold:
        reasons.append("opennsfw")
    if detections is not None:
        counted = [d for d in detections if _counts(d, opennsfw_score, threshold)]
        details["nudenet"] = [
            {"label": d.label, "score": round(d.score, 4), "box": list(d.box)} for d in counted
        ]
        reasons += sorted({f"nudenet:{d.label}" for d in counted})
    if reasons:
        details["reason"] = ",".join(reasons)
    return SafetyVerdict(flagged=bool(reasons), score=opennsfw_score, details=details)


def _counts(detection: Detection, opennsfw_score: float, threshold: float) -> bool:
    if detection.label in NUDENET_SOLO_LABELS:
        return detection.score >= NUDENET_SOLO_SCORE
    if detection.label in NUDENET_CORROBORATED_LABELS:
        corroborated = opennsfw_score >= threshold * CORROBORATION_FRACTION
        return corroborated and detection.score >= NUDENET_CORROBORATED_SCORE
    return False


def obscure(image: Image.Image) -> Image.Image:
    """Blur so strongly that nothing is recognisable: only a coarse colour wash remains.

    Averaging down to at most 8 px on the long side discards all shapes; the bicubic upscale and
    Gaussian blur then hide the resulting blocks. Output size and mode (RGB) match a generated image.
    """
    rgb = image.convert("RGB")
    width, height = rgb.size
    scale = BLUR_CELLS / max(width, height)
    small = rgb.resize(
        (max(1, round(width * scale)), max(1, round(height * scale))), Image.Resampling.BOX
    )
    wash = small.resize((width, height), Image.Resampling.BICUBIC)
    return wash.filter(ImageFilter.GaussianBlur(radius=max(width, height) / (2 * BLUR_CELLS)))


class SafetyFilter:
    """open_nsfw (+ optional nudenet) filter. Build once per worker; `check` a batch, `apply` each."""

    def __init__(
        self, *, classifier: OpenNsfw, detector: NudeNet | None, threshold: float, policy: Policy
    ) -> None:
        self.classifier = classifier
        self.detector = detector
        self.threshold = threshold
        self.policy: Policy = policy

    @classmethod
    def from_settings(cls, settings: Settings) -> SafetyFilter:
        """Load the models named by `nsfw_detector` on the providers `device` allows.

        Raises:
            ModelLoadError: a model is missing/corrupt, or nudenet is requested but not installed.
        """
        providers = onnx_providers(settings.device)
        classifier = OpenNsfw.load(providers)
        detector = NudeNet.load(providers) if settings.nsfw_detector == "opennsfw+nudenet" else None
        return cls(
            classifier=classifier,
            detector=detector,
            threshold=settings.nsfw_threshold,
            policy=settings.safety_policy,
        )

    def check(self, images: Sequence[Image.Image]) -> list[SafetyVerdict]:
        """One verdict per image, in order; the models run once over the whole batch."""
        images = list(images)
        scores = self.classifier.scores(images)
        detections: list[list[Detection]] | list[None] = (
            self.detector.detect(images) if self.detector is not None else [None] * len(images)
        )
        return [
            decide(s, d, threshold=self.threshold) for s, d in zip(scores, detections, strict=True)
        ]

    def apply(self, image: Image.Image, verdict: SafetyVerdict) -> tuple[Image.Image | None, bool]:
        """The image to store under the policy, and whether it was blurred.

        Returns (image, False) when not flagged or policy is `off`, (blurred image, True) for
        `blur`, and (None, False) for `block` (the image is withheld; the job still succeeds).
        """
        if not verdict.flagged or self.policy == "off":
            return image, False
        if self.policy == "block":
            return None, False
        return obscure(image), True
