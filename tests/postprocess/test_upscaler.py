"""Real-ESRGAN x4plus upscaler on the converted bundled weights (small inputs: CPU is slow)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from generative_service.errors import ModelLoadError
from generative_service.postprocess.tiling import upscale_tiled
from generative_service.postprocess.upscaler import Upscaler
from generative_service.settings import Settings

BICUBIC = Image.Resampling.BICUBIC


def sharpness(image: np.ndarray) -> float:
    """Mean absolute Laplacian of the grey image: fine detail and edge contrast."""
    return float(np.abs(ndimage.laplace(image.astype(np.float64).mean(axis=-1))).mean())


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(
        peak_signal_noise_ratio(a.astype(np.float64), b.astype(np.float64), data_range=255)
    )


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A real photograph: a 256 x 256 crop of scikit-image's `coffee`."""
    return Image.fromarray(skimage.data.coffee()).crop((100, 100, 356, 356))


def test_upscales_a_real_photo_sharper_than_bicubic_and_close_to_the_original(
    upscaler: Upscaler, photo: Image.Image
) -> None:
    """Metrics: sharpness = mean |Laplacian|; closeness = PSNR and SSIM against the original.

    Real-ESRGAN is GAN-trained: it restores edges and texture but its PSNR against a clean
    original is known to sit a little *below* bicubic's (~0.7 dB here), so closeness is asserted
    as PSNR >= 24 dB and within 2 dB of bicubic, SSIM >= 0.7, and consistency with the input.
    """
    small = photo.resize((64, 64), BICUBIC)
    sr = np.asarray(upscaler.upscale(small, 4))
    bicubic = np.asarray(small.resize(photo.size, BICUBIC))
    original = np.asarray(photo)
    assert sr.shape == original.shape

    # Sharper: bicubic keeps ~17 % of the original's fine detail, the model ~60 %.
    assert sharpness(sr) > 2.5 * sharpness(bicubic)
    assert 0.4 * sharpness(original) < sharpness(sr) < 1.5 * sharpness(original)
    # Close to the original.
    assert psnr(sr, original) >= 24.0
    assert psnr(sr, original) >= psnr(bicubic, original) - 2.0
    assert structural_similarity(sr, original, channel_axis=2) >= 0.7
    # Faithful: shrunk back, it is the image we gave it.
    assert (
        psnr(np.asarray(Image.fromarray(sr).resize((64, 64), BICUBIC)), np.asarray(small)) >= 30.0
    )


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_factor_two_is_x4_then_lanczos_down(upscaler: Upscaler, photo: Image.Image) -> None:
    small = photo.resize((40, 32), BICUBIC)
    x2 = upscaler.upscale(small, 2)
    x4 = upscaler.upscale(small, 4)
    assert x2.size == (80, 64) and x4.size == (160, 128)
    expected = x4.resize((80, 64), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(x2), np.asarray(expected))


def test_any_mode_comes_out_rgb(upscaler: Upscaler) -> None:
    grey = Image.fromarray(skimage.data.camera()[200:232, 200:240])
    out = upscaler.upscale(grey, 4)
    assert out.mode == "RGB" and out.size == (160, 128)
    channels = np.asarray(out).astype(int)
    assert np.abs(channels[..., 0] - channels[..., 2]).mean() <= 2.0  # grey stays grey


def test_rejects_other_factors(upscaler: Upscaler, photo: Image.Image) -> None:
    with pytest.raises(ValueError, match="2, 4"):
        upscaler.upscale(photo, 3)


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_tiled_matches_untiled_without_seams(upscaler: Upscaler, photo: Image.Image) -> None:
    small = np.asarray(photo.resize((40, 40), BICUBIC))
    x = torch.from_numpy(small.astype(np.float32) / 255).permute(2, 0, 1)[None]
    model = upscaler._model
    untiled = upscale_tiled(model, x, scale=4, tile=0) * 255
    tiled = upscale_tiled(model, x, scale=4, tile=32) * 255  # 60 px padded -> 2 x 2 tiles
    no_context = upscale_tiled(model, x, scale=4, tile=32, context=0) * 255

    def db(a: torch.Tensor, b: torch.Tensor) -> float:
        return float(10 * torch.log10(255**2 / ((a - b) ** 2).mean()))

    assert tiled.shape == untiled.shape == (1, 3, 160, 160)
    assert db(tiled, untiled) >= 38.0
    # Control: without context the seams are there, so the check above can fail.
    assert db(no_context, untiled) < db(tiled, untiled) - 3.0


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_upscale_tile_setting_is_used(
    pp_cache: Path, upscaler: Upscaler, photo: Image.Image
) -> None:
    tiled = Upscaler.from_settings(Settings(cache_dir=pp_cache, upscale_tile=24, device="cpu"))
    tiled._model = upscaler._model  # share the loaded weights; this test is about tiling
    small = photo.resize((36, 36), BICUBIC)
    a, b = np.asarray(tiled.upscale(small, 4)), np.asarray(upscaler.upscale(small, 4))
    assert psnr(a, b) >= 38.0
    assert not np.array_equal(a, b)  # it really was tiled


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_configured_pth_weights_give_the_same_result(
    tmp_path: Path, x4_weights: Path, upscaler: Upscaler
) -> None:
    from safetensors.torch import load_file

    pth = tmp_path / "RealESRGAN_x4plus.pth"
    torch.save({"params_ema": load_file(x4_weights)}, pth)  # the layout the upstream .pth uses
    configured = Upscaler.from_settings(
        Settings(upscaler_weights=pth, cache_dir=tmp_path / "c", device="cpu")
    )
    image = Image.fromarray(skimage.data.chelsea()[100:124, 200:232])
    assert np.array_equal(
        np.asarray(configured.upscale(image, 4)), np.asarray(upscaler.upscale(image, 4))
    )
    assert not (tmp_path / "c").exists()  # nothing converted when weights are configured


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_corrupt_weight_file_is_a_clear_error(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"broken{suffix}"
    path.write_bytes(b"\x00\x01 definitely not weights " * 100)
    upscaler = Upscaler.from_settings(Settings(upscaler_weights=path, device="cpu"))
    with pytest.raises(ModelLoadError) as info:
        upscaler.load()
    assert info.value.setting == "upscaler_weights"
    message = str(info.value)
    assert message.startswith("GENSVC_UPSCALER_WEIGHTS: cannot load") and str(path) in message


def test_truncated_weight_file_is_a_clear_error(tmp_path: Path, x4_weights: Path) -> None:
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(x4_weights.read_bytes()[: 1 << 20])
    with pytest.raises(ModelLoadError, match="GENSVC_UPSCALER_WEIGHTS"):
        Upscaler.from_settings(Settings(upscaler_weights=path, device="cpu")).load()


def test_weights_of_another_model_are_rejected(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    path = tmp_path / "other.safetensors"
    save_file({"encoder.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(ModelLoadError, match="GENSVC_UPSCALER_WEIGHTS"):
        Upscaler.from_settings(Settings(upscaler_weights=path, device="cpu")).load()


def test_missing_or_unsupported_weights_fail_at_start(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        Upscaler.from_settings(Settings(upscaler_weights=tmp_path / "nope.pth"))
    odd = tmp_path / "weights.bin"
    odd.write_bytes(b"x")
    with pytest.raises(ModelLoadError, match="expected one of"):
        Upscaler.from_settings(Settings(upscaler_weights=odd))


def test_weights_load_lazily_and_a_damaged_cache_heals(tmp_path: Path, x4_weights: Path) -> None:
    cached = tmp_path / "upscaler" / x4_weights.name
    cached.parent.mkdir()
    shutil.copy(x4_weights, cached)
    upscaler = Upscaler.from_settings(Settings(cache_dir=tmp_path, device="cpu"))
    assert not upscaler.loaded
    cached.write_bytes(cached.read_bytes()[:1000])  # e.g. a disk that filled up
    out = upscaler.upscale(Image.new("RGB", (8, 8), (200, 30, 30)), 4)
    assert upscaler.loaded and out.size == (32, 32)
    assert cached.read_bytes() == x4_weights.read_bytes()


def test_a_cancel_check_stops_the_upscale_inside_a_tile(upscaler: Upscaler) -> None:
    from generative_service.engine.interrupt import Interrupted

    calls = []

    def check() -> None:
        calls.append(1)
        if len(calls) > 3:  # a few convolutions into the first tile
            raise Interrupted()

    with pytest.raises(Interrupted):
        upscaler.upscale(Image.new("RGB", (16, 16), (90, 20, 200)), 4, check=check)
    assert len(calls) == 4
    assert upscaler.upscale(Image.new("RGB", (8, 8)), 4).size == (32, 32)  # hooks removed


def test_a_cancel_during_the_first_use_load_stops_at_once(tmp_path: Path, x4_weights: Path) -> None:
    """The bundled weights load (and convert) on the first upscale: seconds with no cancel
    point, so a cancel waited for them. Now the request stops; the load finishes for the next."""
    import time

    from generative_service.engine.interrupt import Interrupted

    cached = tmp_path / "upscaler" / x4_weights.name
    cached.parent.mkdir()
    shutil.copy(x4_weights, cached)
    upscaler = Upscaler.from_settings(Settings(cache_dir=tmp_path, device="cpu"))
    checked_while_loading: list[bool] = []

    def canceled() -> None:
        checked_while_loading.append(not upscaler.loaded)
        raise Interrupted()

    with pytest.raises(Interrupted):
        upscaler.upscale(Image.new("RGB", (8, 8)), 4, check=canceled)
    assert checked_while_loading == [True]  # stopped before the weights were even loaded
    deadline = time.monotonic() + 120
    while not upscaler.loaded:  # the load went on in the background
        assert time.monotonic() < deadline, "the weights never finished loading"
        time.sleep(0.05)
    assert upscaler.upscale(Image.new("RGB", (8, 8)), 4, check=lambda: None).size == (32, 32)
