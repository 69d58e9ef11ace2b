"""An offline set of safe (non-NSFW) natural images for measuring the filter's false positives.

Every image comes from a package that is installed here, never from the network:
- scikit-image's bundled `skimage.data` samples (test extra),
- scikit-learn's `load_sample_images()` (china, flower),
- matplotlib's `sample_data` (Grace Hopper's portrait, ...) when matplotlib is installed,
- Debian wallpaper packages (`gnome-backgrounds`, `plasma-workspace-wallpapers`) when installed.

`augment()` adds flips and crops to enlarge the set; reports must count distinct sources
(`SafeImage.source`), not augmented images.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

# scikit-image samples that load without a download (the others need pooch + network).
SKIMAGE_SAMPLES = (
    "astronaut", "binary_blobs", "brick", "camera", "cat", "cell", "checkerboard", "chelsea",
    "clock", "coffee", "coins", "colorwheel", "grass", "gravel", "horse", "hubble_deep_field",
    "immunohistochemistry", "logo", "microaneurysms", "moon", "page", "retina", "rocket",
    "shepp_logan_phantom", "text",
)  # fmt: skip
MATPLOTLIB_SAMPLES = ("grace_hopper.jpg", "Minduka_Present_Blue_Pack.png", "logo2.png")
WALLPAPER_DIRS = (Path("/usr/share/backgrounds"), Path("/usr/share/wallpapers"))
_RASTER = {".jpg", ".jpeg", ".png", ".webp"}


@dataclass(frozen=True)
class SafeImage:
    """One safe image; `source` names the distinct original it was derived from."""

    source: str
    group: str
    variant: str
    image: Image.Image


def to_rgb(array: np.ndarray) -> Image.Image:
    """A uint8 RGB PIL image from a grey, RGB, RGBA or boolean/float sample array."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo or 1.0) * 255).round().astype(np.uint8)
    return Image.fromarray(array).convert("RGB")


def skimage_sources() -> Iterator[SafeImage]:
    """scikit-image samples that ship in its wheel (plus both views of `stereo_motorcycle`)."""
    import skimage.data

    for name in SKIMAGE_SAMPLES:
        yield SafeImage(
            f"skimage:{name}", "scikit-image", "original", to_rgb(getattr(skimage.data, name)())
        )
    left, right, _disparity = skimage.data.stereo_motorcycle()
    yield SafeImage("skimage:stereo_motorcycle_left", "scikit-image", "original", to_rgb(left))
    yield SafeImage("skimage:stereo_motorcycle_right", "scikit-image", "original", to_rgb(right))


def sklearn_sources() -> Iterator[SafeImage]:
    """scikit-learn's two sample photographs."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    for path, array in zip(bunch.filenames, bunch.images, strict=True):
        yield SafeImage(f"sklearn:{Path(path).name}", "scikit-learn", "original", to_rgb(array))


def matplotlib_sources() -> Iterator[SafeImage]:
    """matplotlib's raster sample images, if matplotlib is installed."""
    try:
        import matplotlib
    except ImportError:
        return
    root = Path(matplotlib.get_data_path()) / "sample_data"
    for name in MATPLOTLIB_SAMPLES:
        if (root / name).is_file():
            yield SafeImage(f"matplotlib:{name}", "matplotlib", "original", _open(root / name))


def wallpaper_sources() -> Iterator[SafeImage]:
    """Debian wallpapers (one resolution per wallpaper), if the packages are installed."""
    for root, path in _wallpaper_files():
        yield SafeImage(
            f"wallpaper:{path.relative_to(root)}", "debian-wallpapers", "original", _open(path)
        )


def _wallpaper_files() -> list[tuple[Path, Path]]:
    files = []
    for root in WALLPAPER_DIRS:
        if not root.is_dir():
            continue
        for folder in sorted({p.parent for p in root.rglob("*") if p.suffix.lower() in _RASTER}):
            images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _RASTER)
            if folder.name.startswith("images"):
                # KDE ships one wallpaper in many resolutions: keep the smallest to save decoding.
                images = [min(images, key=lambda p: p.stat().st_size)]
            elif folder.name == "contents":
                continue  # screenshot.png duplicates the wallpaper itself
            files += [(root, image) for image in images]
    return files


def _open(path: Path) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(path) as img:
            img.draft("RGB", (1024, 1024))  # JPEG: decode at reduced size, much faster
            image = img.convert("RGB")
    image.thumbnail((1024, 1024))
    return image


def sources() -> list[SafeImage]:
    """Every distinct safe source image available on this machine."""
    return [*skimage_sources(), *sklearn_sources(), *matplotlib_sources(), *wallpaper_sources()]


def augment(item: SafeImage) -> list[SafeImage]:
    """The original plus a horizontal flip, a centre crop and the four corner crops (7 images)."""
    img = item.image
    w, h = img.size
    cw, ch = max(1, w * 2 // 3), max(1, h * 2 // 3)
    boxes = {
        "center": ((w - cw) // 2, (h - ch) // 2),
        "top_left": (0, 0), "top_right": (w - cw, 0),
        "bottom_left": (0, h - ch), "bottom_right": (w - cw, h - ch),
    }  # fmt: skip
    out = [
        item,
        SafeImage(item.source, item.group, "hflip", img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)),
    ]
    for name, (x, y) in boxes.items():
        out.append(
            SafeImage(item.source, item.group, f"crop_{name}", img.crop((x, y, x + cw, y + ch)))
        )
    return out


def safe_set(*, augmented: bool = True) -> list[SafeImage]:
    """The safe set: distinct sources, optionally enlarged 7x by flips and crops."""
    items = sources()
    return [variant for item in items for variant in augment(item)] if augmented else items
