"""Where models and LoRA adapters live. Pure python (no torch): the gateway imports it too.

Bundle layout (written by `engine.tiny.build_tiny` and by the demo trainer)::

    ROOT/pipeline/            StableDiffusionXLPipeline.save_pretrained(...)
    ROOT/controlnet-canny/    ControlNetModel.save_pretrained            (optional)
    ROOT/controlnet-depth/    ControlNetModel.save_pretrained            (optional)
    ROOT/depth-estimator/     transformers depth model + image processor (optional)
    ROOT/loras/NAME.safetensors                                          (optional)
    ROOT/bundle.json          {"name", "default_size", "default_guidance", "prompt_hint"}
                              (a job without `steps` runs rules.DEFAULT_STEPS)
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from generative_service import rules
from generative_service.settings import Settings

PACKAGE_DIR = Path(__file__).resolve().parent.parent
DEMO_ROOT = PACKAGE_DIR / "models" / "demo"
SDXL_DEFAULT_SIZE = 1024
BUILTIN_MODELS = ("demo", "tiny")
_SEEDED_MARKER = ".seeded-from"
BUNDLE_RECHECK_S = 1.0
# (MODEL, CACHE_DIR) -> (monotonic time checked, bundle.json mtime, parsed bundle.json)
_BUNDLE_INFO: dict[tuple[str, str], tuple[float, int, dict[str, Any]]] = {}


def model_root(settings: Settings) -> Path | None:
    """The bundle (or plain diffusers pipeline) directory of `settings.model`, or None for a hub id.

    `tiny` -> CACHE_DIR/tiny (the engine builds it on first use; it may not exist yet),
    `demo` -> the committed bundle in the package, an existing local directory -> that directory.
    """
    if settings.model == "tiny":
        return Path(settings.cache_dir) / "tiny"
    if settings.model == "demo":
        return DEMO_ROOT
    path = Path(settings.model).expanduser()
    if path.is_dir() or _looks_like_path(settings.model):
        return path
    return None


def is_bundle(root: Path) -> bool:
    """True when `root` uses the bundle layout (a `pipeline/` subdirectory)."""
    return (root / "pipeline" / "model_index.json").is_file()


def pipeline_dir(root: Path) -> Path:
    """The diffusers pipeline directory inside a bundle, or `root` itself for a plain pipeline dir."""
    return root / "pipeline" if (root / "pipeline").is_dir() else root


def bundle_info(settings: Settings) -> dict[str, Any]:
    """The bundle's `bundle.json` (empty for hub ids and plain pipeline dirs)."""
    # NOTE: every submit asks (the default size): the file is looked at again at most once a
    # second, and parsed again only when it changed.
    key = (settings.model, str(settings.cache_dir))
    cached = _BUNDLE_INFO.get(key)
    now = time.monotonic()
    if cached is not None and now - cached[0] < BUNDLE_RECHECK_S:
        return dict(cached[2])
    root = model_root(settings)
    if root is None:
        return {}
    path = root / "bundle.json"
    try:
        stamp = path.stat().st_mtime_ns
        info = (
            cached[2] if cached is not None and cached[1] == stamp else json.loads(path.read_text())
        )
    except (OSError, ValueError):
        stamp, info = -1, {}  # no bundle.json (yet: `tiny` is built on first use), or not JSON
    _BUNDLE_INFO[key] = (now, stamp, info)
    return dict(info)


def default_size(settings: Settings) -> int:
    """Width/height used when a request leaves them null."""
    if settings.default_size:
        return settings.default_size
    size = bundle_info(settings).get("default_size")
    if isinstance(size, int) and size >= 64:
        return size
    return 64 if settings.model in BUILTIN_MODELS else SDXL_DEFAULT_SIZE


def default_guidance(settings: Settings) -> float:
    """Guidance scale used when a request leaves it null: the bundle's `default_guidance` (the
    value its evaluation picked), else rules.DEFAULT_GUIDANCE."""
    value = bundle_info(settings).get("default_guidance")
    if isinstance(value, int | float) and rules.MIN_GUIDANCE <= value <= rules.MAX_GUIDANCE:
        return float(value)
    return rules.DEFAULT_GUIDANCE


def negative_guidance(settings: Settings) -> float:
    """How strongly a negative prompt takes its concept away, as a multiple of the guidance scale
    (engine/negation.py): GENSVC_NEGATIVE_GUIDANCE, else the bundle's `negative_guidance`, else 0
    (plain classifier-free guidance: the negative prompt replaces the unconditional branch)."""
    if settings.negative_guidance is not None:
        return float(settings.negative_guidance)
    value = bundle_info(settings).get("negative_guidance")
    if isinstance(value, int | float) and 0 <= value <= rules.MAX_NEGATIVE_GUIDANCE:
        return float(value)
    return 0.0


def resolve_lora_dir(settings: Settings) -> Path:
    """The LoRA directory: GENSVC_LORA_DIR, else CACHE_DIR/loras (seeded with the bundle's samples)."""
    if settings.lora_dir is not None:
        return Path(settings.lora_dir)
    return Path(settings.cache_dir) / "loras"


def seed_lora_dir(settings: Settings) -> None:
    """Copy the bundle's sample adapters into the default LoRA directory, once per bundle.

    A marker file records which bundle seeded it, so adapters a user deleted do not come back.
    An explicit GENSVC_LORA_DIR is never touched.
    """
    if settings.lora_dir is not None:
        return
    root = model_root(settings)
    if root is None or not (root / "loras").is_dir():
        return
    target = resolve_lora_dir(settings)
    marker = target / _SEEDED_MARKER
    seeded = set(marker.read_text().split("\n")) if marker.is_file() else set()
    if str(root.resolve()) in seeded:
        return
    target.mkdir(parents=True, exist_ok=True)
    for source in sorted((root / "loras").glob("*.safetensors")):
        destination = target / source.name
        if not destination.exists():
            tmp = destination.with_suffix(".tmp")
            shutil.copyfile(source, tmp)
            tmp.replace(destination)  # atomic: a reader never sees half a file
    seeded.add(str(root.resolve()))
    marker.write_text("\n".join(sorted(item for item in seeded if item)))


def list_lora_names(settings: Settings) -> list[str]:
    """Names of the adapters in the LoRA directory (file stems of `*.safetensors`), sorted."""
    seed_lora_dir(settings)
    directory = resolve_lora_dir(settings)
    if not directory.is_dir():
        return []
    return sorted(path.stem for path in directory.glob("*.safetensors") if path.is_file())


def lora_path(settings: Settings, name: str) -> Path:
    """The file of adapter `name` (it may not exist)."""
    return resolve_lora_dir(settings) / f"{name}.safetensors"


def _looks_like_path(value: str) -> bool:
    # "org/name" is a hub id; "./x", "/x", "~/x" or "x/y/z" are meant as local paths.
    return value.startswith((".", "/", "~")) or value.count("/") > 1
