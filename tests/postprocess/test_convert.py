"""ncnn -> safetensors conversion of the bundled Real-ESRGAN x4plus weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from safetensors import safe_open

from generative_service.errors import ModelLoadError
from generative_service.postprocess import convert
from generative_service.postprocess.convert import (
    bundled_ncnn_files,
    convert_ncnn,
    ensure_converted,
    rrdbnet_conv_keys,
)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_converted_file_has_the_standard_rrdbnet_keys(x4_weights: Path) -> None:
    with safe_open(x4_weights, framework="numpy") as f:
        keys = set(f.keys())
        first = f.get_tensor("conv_first.weight")
        last = f.get_tensor("conv_last.weight")
    expected = {f"{k}.{kind}" for k in rrdbnet_conv_keys() for kind in ("weight", "bias")}
    assert keys == expected
    assert len(keys) == 702  # 351 convolutions
    assert first.shape == (64, 3, 3, 3) and last.shape == (3, 64, 3, 3)


def test_spandrel_detects_a_4x_esrgan(x4_weights: Path) -> None:
    from spandrel import ModelLoader

    model = ModelLoader().load_from_file(x4_weights)
    assert model.architecture.name == "ESRGAN"
    assert model.scale == 4 and model.input_channels == 3
    assert "23nb" in model.tags and "64nf" in model.tags


def test_conversion_is_deterministic(tmp_path: Path, x4_weights: Path) -> None:
    again = ensure_converted(tmp_path / "other")
    assert again != x4_weights
    assert again.read_bytes() == x4_weights.read_bytes()


def test_conversion_is_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = ensure_converted(tmp_path)
    stat = first.stat()

    def must_not_run(*_args: object) -> None:
        raise AssertionError("converted again although the cached file exists")

    monkeypatch.setattr(convert, "convert_ncnn", must_not_run)
    second = ensure_converted(tmp_path)
    assert second == first
    assert (second.stat().st_ino, second.stat().st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    # The write was atomic: no temporary file is left beside the result.
    assert [p.name for p in first.parent.iterdir()] == [first.name]


def test_force_reconverts_identically(tmp_path: Path) -> None:
    first = ensure_converted(tmp_path)
    digest = sha256(first)
    first.write_bytes(b"damaged")
    assert sha256(ensure_converted(tmp_path, force=True)) == digest


def test_truncated_ncnn_blob_is_rejected() -> None:
    param, binary = bundled_ncnn_files()
    blob = binary.read_bytes()
    with pytest.raises(ValueError, match="bytes"):
        convert_ncnn(param.read_text(), blob[:-100])


def test_untagged_ncnn_blob_is_rejected() -> None:
    param, binary = bundled_ncnn_files()
    blob = bytearray(binary.read_bytes())
    blob[0:4] = b"\x00\x00\x00\x00"  # fp32 tag instead of fp16
    with pytest.raises(ValueError, match="fp16"):
        convert_ncnn(param.read_text(), bytes(blob))


def test_missing_wheel_names_the_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(convert, "NCNN_PACKAGE", "no_such_realesrgan_wheel")
    with pytest.raises(ModelLoadError) as info:
        ensure_converted(tmp_path)
    assert info.value.setting == "upscaler_weights"
    assert "GENSVC_UPSCALER_WEIGHTS" in str(info.value) and "not installed" in str(info.value)
