"""The ONNX Runtime backend: the UNet, ControlNets and VAE decoder run as exported graphs.

The pipelines keep their PyTorch modules (LoRA loading, text encoders and the eager fallback
use them); each module's `forward` (the VAE's `decode`) is replaced by a stand-in that feeds an
ONNX Runtime session. Everything else stays diffusers: schedulers, per-image generators and
guidance, the step callback (previews, cancel), so a batch still equals its jobs run alone.

- First start exports the base UNet, every ControlNet and the VAE decoder (cached on disk;
  later starts only load them).
- A LoRA set (names + scales) gets its own UNet graph, fused from a copy of the UNet on first
  use and cached on disk; the base graph and the serving UNet are never changed. At most
  GENSVC_ONNX_LORA_GRAPHS LoRA-set graphs stay loaded (LRU).
- Latent sizes the traced UNet cannot take (not a multiple of 2**upsamplers, e.g. 72 px on the
  tiny model) run eagerly; the job's record says `"ran": "eager"`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from generative_service.engine import paths
from generative_service.engine.backends import onnx_export
from generative_service.engine.backends.base import Backend, StandIn, UNetStandIn
from generative_service.engine.hashing import combined
from generative_service.errors import ModelLoadError

log = logging.getLogger(__name__)

_PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
}


class OrtBackend(Backend):
    """Runs the pipelines' heavy modules through ONNX Runtime sessions."""

    name = "onnxruntime"

    def __init__(self, settings, models) -> None:
        import onnxruntime

        super().__init__(settings, models)
        self.ort = onnxruntime
        self.pipe = models.pipe
        self.unet = models.pipe.unet
        if models.dtype not in (torch.float32, torch.float16):
            raise ModelLoadError(
                "dtype", f"the onnxruntime backend runs float32 or float16, not {models.dtype}"
            )
        self.provider = _provider_name(settings, models.device)
        self.cache = onnx_export.GraphCache(Path(settings.cache_dir) / "onnx")
        self.latent_size = paths.default_size(settings) // self.pipe.vae_scale_factor
        self.multiple = 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.start_seconds: dict[str, float] = {}
        self.graphs: dict[str, str] = {}
        self.lora_graphs: OrderedDict[tuple, tuple[str, Any]] = OrderedDict()
        self.lora_graph_seconds: list[float] = []
        self._zeros: dict[tuple, dict[str, np.ndarray]] = {}
        self._serving = True
        self._unet_key, self._unet_session = self._unet_graph([])
        self._base = (self._unet_key, self._unet_session)
        self._install()

    # --- Backend API -------------------------------------------------------------------------------

    def prepare(self, plan, *, loras: list[dict]) -> dict[str, Any]:
        latent_h = plan.height // self.pipe.vae_scale_factor
        latent_w = plan.width // self.pipe.vae_scale_factor
        self._serving = latent_h % self.multiple == 0 and latent_w % self.multiple == 0
        if not self._serving:
            log.warning(
                "onnx.eager_fallback",
                extra={"size": f"{plan.width}x{plan.height}", "multiple": self.multiple * 8},
            )
            return {"name": self.name, "ran": "eager", "reason": "size not served by the graph"}
        self._unet_key, self._unet_session = self._base if not loras else self._lora_graph(loras)
        return {
            "name": self.name,
            "ran": self.name,
            "provider": self.provider,
            "unet_graph": self._unet_key,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "graphs": dict(self.graphs),
            "size_multiple": self.multiple * self.pipe.vae_scale_factor,
            "lora_graphs_loaded": len(self.lora_graphs),
        }

    # --- graphs ------------------------------------------------------------------------------------

    def _session(self, path: Path):
        options = self.ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        session = self.ort.InferenceSession(
            str(path), options, providers=_provider_list(self.provider, self.settings)
        )
        if session.get_providers()[0] != self.provider:
            raise ModelLoadError(
                "onnx_provider",
                f"ONNX Runtime could not start {self.provider} (it offered {session.get_providers()})",
            )
        return session

    def _export_controlnet(self, controlnet: Any, path: Path) -> None:
        onnx_export.export_controlnet(
            controlnet, self.unet.config, path, latent_size=self.latent_size
        )

    def _export_settings(self) -> dict[str, Any]:
        return {
            "exporter": onnx_export.EXPORTER,
            "opset": onnx_export.OPSET,
            "dtype": str(self.models.dtype),
            "latent_size": self.latent_size,
            "torch": torch.__version__,
        }

    def _unet_graph(self, loras: list[dict]) -> tuple[str, Any]:
        key_parts = {
            "weights": self._weights("model", prefix="unet/"),
            "loras": [(entry["sha256"], entry["scale"]) for entry in loras],
            **self._export_settings(),
        }

        def export(path: Path) -> None:
            module = onnx_export.fused_copy(self.unet) if loras else self.unet
            onnx_export.export_unet(module, path, latent_size=self.latent_size)

        graph = self.cache.get("unet", key_parts, export)
        if not loras:
            self.graphs["unet"] = graph.key
            self.start_seconds["unet"] = graph.seconds
        started = time.perf_counter()
        session = self._session(graph.path)
        if loras:
            self.lora_graph_seconds.append(graph.seconds + time.perf_counter() - started)
        return graph.key, session

    def _lora_graph(self, loras: list[dict]) -> tuple[str, Any]:
        signature = tuple((entry["sha256"], entry["scale"]) for entry in loras)
        cached = self.lora_graphs.get(signature)
        if cached is not None:
            self.lora_graphs.move_to_end(signature)
            return cached
        started = time.perf_counter()
        cached = self._unet_graph(loras)
        log.info(
            "onnx.lora_graph",
            extra={
                "loras": [entry["name"] for entry in loras],
                "seconds": round(time.perf_counter() - started, 2),
            },
        )
        self.lora_graphs[signature] = cached
        while len(self.lora_graphs) > self.settings.onnx_lora_graphs:
            self.lora_graphs.popitem(last=False)
        return cached

    def _weights(self, component: str, *, prefix: str = "") -> str:
        files = {
            name: digest
            for name, digest in self.models.files.get(component, {}).items()
            if name.startswith(prefix)
        }
        if not files:  # no local files to hash (e.g. a hub id without a snapshot)
            return "source:" + self.models.sources.get(component, "") + prefix
        return combined(files)

    def _install(self) -> None:
        """Export (or load) every graph and put the stand-ins in the modules' place."""
        self.unet.forward = _UNetStandIn(self, self.unet)
        for kind, pipe in self.models.control_pipes.items():
            controlnet = pipe.controlnet
            graph = self.cache.get(
                f"controlnet-{kind}",
                {"weights": self._weights(f"controlnet_{kind}"), **self._export_settings()},
                partial(self._export_controlnet, controlnet),
            )
            self.graphs[f"controlnet_{kind}"] = graph.key
            self.start_seconds[f"controlnet_{kind}"] = graph.seconds
            controlnet.forward = _ControlNetStandIn(self, controlnet, self._session(graph.path))
        vae = self.pipe.vae
        decoder_dtype = _decoder_dtype(vae)
        graph = self.cache.get(
            "vae-decoder",
            {
                "weights": self._weights("model", prefix="vae/"),
                **self._export_settings(),
                "dtype": str(decoder_dtype),
            },
            lambda path: onnx_export.export_decoder(
                _as_dtype(vae, decoder_dtype), path, latent_size=self.latent_size
            ),
        )
        self.graphs["vae_decoder"] = graph.key
        self.start_seconds["vae_decoder"] = graph.seconds
        vae.decode = _DecoderStandIn(self, vae, self._session(graph.path), dtype=decoder_dtype)

    def zero_residuals(self, batch: int, height: int, width: int, dtype) -> dict[str, np.ndarray]:
        """All-zero ControlNet residuals for a UNet call without a ControlNet (cached per shape)."""
        key = (batch, height, width, dtype)
        zeros = self._zeros.get(key)
        if zeros is None:
            shapes = onnx_export.residual_shapes(self.unet.config, height=height, width=width)
            names = onnx_export.unet_input_names(self.unet.config)[len(onnx_export.UNET_INPUTS) :]
            zeros = {
                name: np.zeros((batch, *shape), dtype=dtype)
                for name, shape in zip(names, shapes, strict=True)
            }
            self._zeros = {key: zeros}  # one shape at a time is what a batch needs
        return zeros


# --- stand-ins ---------------------------------------------------------------------------------------


class _UNetStandIn(UNetStandIn):
    """The exported UNet graph (the LoRA set's, else the base one), ControlNet residuals fed."""

    backend: OrtBackend

    def serves(self, sample: torch.Tensor) -> bool:
        return self.backend._serving

    def graph(self, sample, timestep, hidden, text_embeds, time_ids, residuals) -> torch.Tensor:
        batch, _, height, width = sample.shape
        feeds = {
            "sample": _array(sample),
            "timestep": _timestep(timestep),
            "encoder_hidden_states": _array(hidden),
            "text_embeds": _array(text_embeds),
            "time_ids": _array(time_ids),
        }
        if residuals is None:
            feeds.update(self.backend.zero_residuals(batch, height, width, feeds["sample"].dtype))
        else:
            names = onnx_export.unet_input_names(self.module.config)[len(onnx_export.UNET_INPUTS) :]
            feeds.update(
                {name: _array(value) for name, value in zip(names, residuals, strict=True)}
            )
        (noise,) = self.backend._unet_session.run(None, feeds)
        return _tensor(noise, like=sample)


class _ControlNetStandIn(StandIn):
    backend: OrtBackend

    def __init__(self, backend: OrtBackend, module: torch.nn.Module, session) -> None:
        super().__init__(backend, module)
        self.session = session

    def __call__(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        controlnet_cond,
        conditioning_scale=1.0,
        *,
        added_cond_kwargs=None,
        guess_mode=False,
        return_dict=True,
        **extra,
    ):
        unused = {name: value for name, value in extra.items() if value is not None}
        if not self.backend._serving or unused or guess_mode:
            return self.eager(
                sample,
                timestep,
                encoder_hidden_states,
                controlnet_cond,
                conditioning_scale,
                added_cond_kwargs=added_cond_kwargs,
                guess_mode=guess_mode,
                return_dict=return_dict,
                **extra,
            )
        outputs = self.session.run(
            None,
            {
                "sample": _array(sample),
                "timestep": _timestep(timestep),
                "encoder_hidden_states": _array(encoder_hidden_states),
                "controlnet_cond": _array(controlnet_cond),
                "text_embeds": _array(added_cond_kwargs["text_embeds"]),
                "time_ids": _array(added_cond_kwargs["time_ids"]),
            },
        )
        # The module scales its outputs by `conditioning_scale` in the same way.
        tensors = [_tensor(value, like=sample) * conditioning_scale for value in outputs]
        down, mid = tensors[:-1], tensors[-1]
        if not return_dict:
            return down, mid
        from diffusers.models.controlnets.controlnet import ControlNetOutput

        return ControlNetOutput(down_block_res_samples=down, mid_block_res_sample=mid)


class _DecoderStandIn(StandIn):
    backend: OrtBackend

    def __init__(self, backend: OrtBackend, module, session, *, dtype: torch.dtype) -> None:
        super().__init__(backend, module)
        self.session = session
        self.dtype = dtype

    def __call__(self, z, return_dict=True, **extra):
        if not self.backend._serving:
            return type(self.module).decode(self.module, z, return_dict=return_dict, **extra)
        (image,) = self.session.run(None, {"latents": _array(z.to(self.dtype))})
        out = _tensor(image, like=z)
        if not return_dict:
            return (out,)
        from diffusers.models.autoencoders.vae import DecoderOutput

        return DecoderOutput(sample=out)


# --- helpers -------------------------------------------------------------------------------------------


def _provider_name(settings, device: torch.device) -> str:
    import onnxruntime

    choice = settings.onnx_provider
    if choice == "auto":
        choice = "cuda" if device.type == "cuda" else "cpu"
    if choice != "cpu" and device.type != "cuda":
        raise ModelLoadError(
            "onnx_provider", f"{choice} needs a CUDA device (GENSVC_DEVICE is {device})"
        )
    provider = _PROVIDERS[choice]
    available = onnxruntime.get_available_providers()
    if provider not in available:
        raise ModelLoadError(
            "onnx_provider",
            f"{provider} is not in this onnxruntime build (it has {', '.join(available)}); "
            "GPU workers need `onnxruntime-gpu` (the `gpu` extra, Dockerfile.gpu)",
        )
    return provider


def _provider_list(provider: str, settings) -> list:
    if provider == "CPUExecutionProvider":
        return [provider]
    device_id = torch.device(settings.device).index if settings.device.startswith("cuda:") else 0
    providers: list = [("CUDAExecutionProvider", {"device_id": device_id})]
    if provider == "TensorrtExecutionProvider":
        trt_cache = Path(settings.cache_dir) / "onnx" / "tensorrt"
        trt_cache.mkdir(parents=True, exist_ok=True)
        options = {
            "device_id": device_id,
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(trt_cache),
            "trt_fp16_enable": settings.dtype in ("auto", "float16"),
        }
        providers.insert(0, (provider, options))
    return providers


def _decoder_dtype(vae) -> torch.dtype:
    # The pipeline upcasts such a VAE to float32 before decoding; the graph matches it.
    if vae.dtype == torch.float16 and vae.config.force_upcast:
        return torch.float32
    return vae.dtype


def _as_dtype(vae, dtype: torch.dtype):
    if vae.dtype == dtype:
        return vae
    import copy

    return copy.deepcopy(vae).to(dtype)


def _array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().numpy()


def _timestep(timestep) -> np.ndarray:
    # The pipelines pass a 0-d (often int64) tensor; the graph takes float32 of shape [1].
    value = torch.as_tensor(timestep).detach().cpu().to(torch.float32).reshape(-1)[:1]
    return value.numpy()


def _tensor(array: np.ndarray, *, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)
