"""Model loading: resolve GENSVC_MODEL and friends to files, load them once, fail naming the setting.

Every component loads through `from_pretrained`, for the tiny model as for real weights. The
ControlNet pipelines are built from the base pipeline's components, so they share every module
(no second copy of the UNet, VAE or text encoders in memory).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    ControlNetModel,
    StableDiffusionXLControlNetPipeline,
    StableDiffusionXLPipeline,
)

from generative_service.engine import paths, single_file
from generative_service.engine._quiet import quiet_progress_bars
from generative_service.engine.control import DepthEstimator
from generative_service.engine.hashing import FileHasher
from generative_service.errors import ModelLoadError
from generative_service.settings import Settings

log = logging.getLogger(__name__)
CONTROL_TYPES = ("canny", "depth")


@dataclass
class LoadedModels:
    """Everything a worker keeps in memory for its lifetime."""

    pipe: StableDiffusionXLPipeline
    control_pipes: dict[str, StableDiffusionXLControlNetPipeline]
    depth: DepthEstimator | None
    device: torch.device
    dtype: torch.dtype
    attention: str
    sources: dict[str, str] = field(default_factory=dict)  # component -> path or hub id
    runtime: dict[str, Any] = field(default_factory=dict)  # dtype, VAE, memory format, TF32, ...
    files: dict[str, dict[str, str]] = field(default_factory=dict)  # component -> {file: sha256}
    info: dict[str, Any] = field(default_factory=dict)  # bundle.json


def resolve_device(settings: Settings) -> torch.device:
    """GENSVC_DEVICE as a torch device ('auto': CUDA when available)."""
    if settings.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(settings.device)
    except (RuntimeError, ValueError):
        raise ModelLoadError(
            "device", f"{settings.device!r} is not a device (use auto, cpu, cuda or cuda:N)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("device", f"{settings.device!r} requested but CUDA is not available")
    return device


def resolve_dtype(settings: Settings, device: torch.device) -> torch.dtype:
    """GENSVC_DTYPE ('auto': bfloat16 on CUDA, float32 on CPU).

    bfloat16 rather than float16 on CUDA: the stock SDXL VAE overflows in float16, so diffusers
    decodes it in float32 (`force_upcast`), which is slow; in bfloat16 it decodes as it is.
    """
    if settings.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if settings.dtype == "float16" and device.type == "cpu":
        raise ModelLoadError("dtype", "float16 is not supported on CPU; use float32 or bfloat16")
    return getattr(torch, settings.dtype)


def load_models(settings: Settings, *, hasher: FileHasher) -> LoadedModels:
    """Load base pipeline, ControlNets and depth estimator named by `settings`.

    Raises:
        ModelLoadError: naming the GENSVC_ setting whose model is missing, broken or incompatible.
    """
    quiet_progress_bars()
    device = resolve_device(settings)
    dtype = resolve_dtype(settings, device)
    root, source = _base_source(settings)
    if single_file.is_single_file(source):
        pipe = single_file.load_pipeline(source, settings=settings, dtype=dtype)
        _check_sdxl(pipe, source)
        pipe.set_progress_bar_config(disable=True)
    else:
        pipe = _load_pipeline(source, dtype=dtype, device=device)
    models = LoadedModels(
        pipe=pipe, control_pipes={}, depth=None, device=device, dtype=dtype, attention="sdpa"
    )
    models.sources["model"] = source
    if settings.vae:
        pipe.vae = _load_vae(settings.vae, dtype=dtype)
        models.sources["vae"] = settings.vae
    pipe.to(device)
    models.info = paths.bundle_info(settings) if root is not None else {}
    for kind in CONTROL_TYPES:
        ref = _component_ref(getattr(settings, f"controlnet_{kind}"), root, f"controlnet-{kind}")
        if ref is not None:
            controlnet = _load_controlnet(
                ref, setting=f"controlnet_{kind}", pipe=pipe, dtype=dtype, device=device
            )
            models.control_pipes[kind] = StableDiffusionXLControlNetPipeline(
                **pipe.components,
                controlnet=controlnet,
                force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt,
                add_watermarker=False,
            )
            models.control_pipes[kind].set_progress_bar_config(disable=True)
            models.sources[f"controlnet_{kind}"] = ref
    depth_ref = _component_ref(settings.depth_estimator, root, "depth-estimator")
    if depth_ref is not None and "depth" in models.control_pipes:
        models.depth = _load_depth(depth_ref, dtype=dtype, device=device)
        models.sources["depth_estimator"] = depth_ref
    elif "depth" in models.control_pipes:
        log.warning("depth ControlNet without a depth estimator: control.type=depth is unavailable")
        del models.control_pipes["depth"]
    models.attention = configure_attention(models, settings)
    models.runtime = configure_runtime(models, settings)
    models.files = {name: _hash_source(ref, hasher) for name, ref in models.sources.items()}
    return models


def configure_attention(models: LoadedModels, settings: Settings) -> str:
    """SDPA (diffusers' default processor) or xFormers; returns the mode in use."""
    mode = settings.attention
    if mode == "auto":
        mode = (
            "xformers"
            if models.device.type == "cuda" and importlib.util.find_spec("xformers")
            else "sdpa"
        )
    if mode == "xformers":
        if models.device.type != "cuda":
            raise ModelLoadError("attention", "xFormers needs a CUDA device")
        try:
            for pipe in [models.pipe, *models.control_pipes.values()]:
                pipe.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # noqa: BLE001 - e.g. xformers missing or built for another torch
            raise ModelLoadError("attention", f"xFormers could not be enabled: {exc}") from None
    return mode


def configure_runtime(models: LoadedModels, settings: Settings) -> dict[str, Any]:
    """Memory format and TF32 ('auto': on with CUDA); returns what is in use, for /v1/models.

    channels_last helps the UNet's and VAE's convolutions on CUDA tensor cores; TF32 speeds up the
    float32 parts (and everything under GENSVC_DTYPE=float32) on Ampere and newer GPUs.
    """
    cuda = models.device.type == "cuda"
    channels_last = settings.channels_last == "on" or (settings.channels_last == "auto" and cuda)
    tf32 = settings.tf32 == "on" or (settings.tf32 == "auto" and cuda)
    if channels_last:
        modules = [models.pipe.unet, models.pipe.vae]
        modules += [pipe.controlnet for pipe in models.control_pipes.values()]
        for module in modules:
            module.to(memory_format=torch.channels_last)
    if tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    vae = models.pipe.vae
    upcast = vae.dtype == torch.float16 and bool(vae.config.get("force_upcast", False))
    if upcast:
        log.warning(
            "float16 with a VAE that needs float32 (force_upcast): every decode runs in float32; "
            "use GENSVC_DTYPE=bfloat16 or an fp16-safe VAE (GENSVC_VAE=madebyollin/sdxl-vae-fp16-fix)"
        )
    return {
        "dtype": str(models.dtype).removeprefix("torch."),
        "attention": models.attention,
        "vae": models.sources.get("vae", "the model's own"),
        "vae_decode_dtype": "float32" if upcast else str(vae.dtype).removeprefix("torch."),
        "channels_last": channels_last,
        "tf32": tf32,
    }


# --- sources ----------------------------------------------------------------------------------------


def _base_source(settings: Settings) -> tuple[Path | None, str]:
    """(bundle root or None, what to pass to from_pretrained) for GENSVC_MODEL."""
    if settings.model == "tiny":
        from generative_service.engine.tiny import ensure_tiny

        tiny = ensure_tiny(Path(settings.cache_dir))
        return tiny, str(paths.pipeline_dir(tiny))
    root = paths.model_root(settings)
    if settings.model == "demo" and not paths.is_bundle(paths.DEMO_ROOT):
        raise ModelLoadError(
            "model",
            f"the demo model is not built ({paths.DEMO_ROOT} has no pipeline/); train it with `gensvc models train-demo` or set GENSVC_MODEL=tiny",
        )
    if root is None:
        return None, settings.model  # a hub id
    if root.is_file():
        if not single_file.is_single_file(str(root)):
            raise ModelLoadError(
                "model",
                f"{root} is a file but not a single-file checkpoint (.safetensors, .ckpt); a folder or hub id also works",
            )
        return None, str(root)
    if not root.is_dir():
        raise ModelLoadError("model", f"{root} does not exist")
    if not (paths.pipeline_dir(root) / "model_index.json").is_file():
        raise ModelLoadError(
            "model",
            f"{root} is neither a model bundle (pipeline/ inside) nor a diffusers pipeline (model_index.json)",
        )
    return (root if paths.is_bundle(root) else None), str(paths.pipeline_dir(root))


def _component_ref(explicit: str | None, root: Path | None, subdir: str) -> str | None:
    if explicit:
        return explicit
    if root is not None and (root / subdir).is_dir():
        return str(root / subdir)
    return None


def _looks_local(ref: str) -> bool:
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~"))


def _check_local(ref: str, setting: str) -> None:
    if _looks_local(ref) and not Path(ref).expanduser().exists():
        raise ModelLoadError(setting, f"{ref} does not exist")


def _load_pipeline(
    source: str, *, dtype: torch.dtype, device: torch.device
) -> StableDiffusionXLPipeline:
    _check_local(source, "model")
    variant = _fp16_variant(source, dtype=dtype, device=device)
    try:
        pipe = StableDiffusionXLPipeline.from_pretrained(
            source, dtype=dtype, add_watermarker=False, variant=variant
        )
    except Exception as exc:  # noqa: BLE001 - any failure to load is a configuration error
        raise ModelLoadError(
            "model", f"cannot load an SDXL pipeline from {source}: {_short(exc)}"
        ) from None
    _check_sdxl(pipe, source)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _check_sdxl(pipe, source: str) -> None:
    if (
        getattr(pipe, "text_encoder_2", None) is None
        or pipe.unet.config.addition_embed_type != "text_time"
    ):
        raise ModelLoadError("model", f"{source} is not a Stable Diffusion XL base pipeline")


def _fp16_variant(source: str, *, dtype: torch.dtype, device: torch.device) -> str | None:
    """'fp16' when serving in half precision on a GPU and the model has fp16 files (half the download)."""
    if device.type != "cuda" or dtype not in (torch.float16, torch.bfloat16):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        return "fp16" if any(path.glob("unet/*.fp16.safetensors")) else None
    try:
        from huggingface_hub import list_repo_files

        files = list_repo_files(source)
    except Exception:  # noqa: BLE001 - offline or unknown repo: load what is there
        return None
    return "fp16" if any(name.endswith(".fp16.safetensors") for name in files) else None


def _load_vae(ref: str, *, dtype: torch.dtype):
    from diffusers import AutoencoderKL

    _check_local(ref, "vae")
    try:
        if single_file.is_single_file(ref):
            return AutoencoderKL.from_single_file(
                ref, config=str(single_file.vae_config_dir()), dtype=dtype, local_files_only=True
            )
        return AutoencoderKL.from_pretrained(ref, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError("vae", f"cannot load a VAE from {ref}: {_short(exc)}") from None


def _load_controlnet(
    ref: str, *, setting: str, pipe, dtype: torch.dtype, device: torch.device
) -> ControlNetModel:
    _check_local(ref, setting)
    try:
        controlnet = ControlNetModel.from_pretrained(ref, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            setting, f"cannot load a ControlNet from {ref}: {_short(exc)}"
        ) from None
    unet = pipe.unet.config
    for key in ("cross_attention_dim", "block_out_channels", "addition_embed_type"):
        if _norm(controlnet.config.get(key)) != _norm(unet.get(key)):
            raise ModelLoadError(
                setting,
                f"ControlNet {ref} does not fit the base model ({key}: {controlnet.config.get(key)} vs {unet.get(key)})",
            )
    return controlnet.to(device)


def _load_depth(ref: str, *, dtype: torch.dtype, device: torch.device) -> DepthEstimator:
    _check_local(ref, "depth_estimator")
    try:
        return DepthEstimator.load(ref, device=device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001
        raise ModelLoadError(
            "depth_estimator", f"cannot load a depth-estimation model from {ref}: {_short(exc)}"
        ) from None


def _hash_source(ref: str, hasher: FileHasher) -> dict[str, str]:
    local = Path(ref).expanduser()
    path = local if local.is_dir() else _hub_snapshot(ref)
    if path is None:
        return {}
    return hasher.tree(path)


def _hub_snapshot(ref: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # noqa: BLE001 - hashes are best effort for hub ids
        return None


def _norm(value: Any) -> Any:
    return list(value) if isinstance(value, list | tuple) else value


def _short(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
