"""Single-file SDXL checkpoints (the `.safetensors` files made for AUTOMATIC1111 and ComfyUI).

diffusers' single-file loader needs the pipeline's configs and tokenizers beside the weights; it
normally fetches them from the hub. Here they come from, in order: GENSVC_MODEL_CONFIG_DIR; a
local Hugging Face cache copy of stabilityai/stable-diffusion-xl-base-1.0; or a folder assembled
once in CACHE_DIR from the SDXL base configs written in `sdxl_configs` and CLIP's vocabulary as
the open_clip package ships it. The hub is never asked at start.
"""

from __future__ import annotations

import fcntl
import shutil
import tempfile
from pathlib import Path

import torch

from generative_service.errors import ModelLoadError
from generative_service.settings import Settings

SUFFIXES = (".safetensors", ".ckpt", ".sft")
SDXL_BASE_REPO = "stabilityai/stable-diffusion-xl-base-1.0"
_ASSEMBLED = "sdxl-base-config"


def is_single_file(ref: str) -> bool:
    """True when `ref` names a checkpoint file (it may not exist yet: the caller reports that)."""
    return Path(ref).suffix.lower() in SUFFIXES and not Path(ref).expanduser().is_dir()


def load_pipeline(path: str, *, settings: Settings, dtype: torch.dtype):
    """The SDXL pipeline in checkpoint `path`, assembled with offline configs.

    Raises:
        ModelLoadError: the file is missing or not an SDXL checkpoint, or no configs are available.
    """
    from diffusers import StableDiffusionXLPipeline

    file = Path(path).expanduser()
    if not file.is_file():
        raise ModelLoadError("model", f"{file} does not exist")
    config = config_dir(settings)
    try:
        return StableDiffusionXLPipeline.from_single_file(
            str(file),
            config=str(config),
            dtype=dtype,
            local_files_only=True,
            add_watermarker=False,
        )
    except Exception as exc:  # noqa: BLE001 - any failure to load is a configuration error
        text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(
            "model",
            f"cannot load {file} as a single-file SDXL checkpoint (configs: {config}): {text}",
        ) from None


def config_dir(settings: Settings) -> Path:
    """The diffusers-layout folder (configs + tokenizers) a single-file checkpoint is read with."""
    if settings.model_config_dir is not None:
        folder = Path(settings.model_config_dir).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                "model_config_dir",
                f"{folder} has no model_index.json (a diffusers pipeline folder)",
            )
        return folder
    cached = _hub_cache_copy()
    if cached is not None:
        return cached
    return assembled_config_dir(Path(settings.cache_dir))


def vae_config_dir() -> Path:
    """A folder with SDXL's VAE config (for a VAE given as one file); no tokenizers needed."""
    from generative_service.engine import sdxl_configs

    folder = Path(tempfile.gettempdir()) / "gensvc-sdxl-vae-config"
    if not (folder / "vae" / "config.json").is_file():
        sdxl_configs.write_pipeline_configs(folder, tokenizers=False)
    return folder / "vae"


def assembled_config_dir(cache_dir: Path) -> Path:
    """CACHE_DIR/sdxl-base-config, written once (file lock: one writer at a time)."""
    from generative_service.engine import sdxl_configs

    root = cache_dir / _ASSEMBLED
    if (root / "tokenizer_2" / "tokenizer_config.json").is_file():
        return root
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f"{_ASSEMBLED}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (root / "tokenizer_2" / "tokenizer_config.json").is_file():
            return root
        staging = Path(tempfile.mkdtemp(prefix=f".{_ASSEMBLED}-", dir=cache_dir))
        try:
            sdxl_configs.write_pipeline_configs(staging)
        except FileNotFoundError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelLoadError(
                "model_config_dir",
                f"a single-file checkpoint needs SDXL's tokenizers: {exc}, or set GENSVC_MODEL_CONFIG_DIR",
            ) from None
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    return root


def _hub_cache_copy() -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        folder = Path(
            snapshot_download(
                SDXL_BASE_REPO,
                local_files_only=True,
                allow_patterns=["*.json", "*.txt", "tokenizer*/*"],
            )
        )
    except Exception:  # noqa: BLE001 - not in the cache: assemble our own
        return None
    return folder if (folder / "tokenizer_2").is_dir() else None
