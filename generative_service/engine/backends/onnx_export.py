"""Export the UNet, ControlNets and VAE decoder to ONNX, cached on disk by weights and settings.

Graphs use the TorchScript-based exporter (opset 17): about a second for the demo model, where
the dynamo exporter takes ~20 s per UNet. Every graph has dynamic batch, height and width axes.

The UNet graph always takes the ControlNet residuals as inputs (zeros without a ControlNet:
adding 0.0 is exact), so one graph serves both pipelines.

Cache layout: `CACHE_DIR/onnx/<component>-<key>/model.onnx` (+ external weight files for
models over 2 GB) and `meta.json`, where `key` hashes the weights' sha256, the LoRA set and the
export settings. A graph is written to a staging directory and renamed into place under a file
lock, so concurrent workers neither race nor load half a graph.
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import json
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

EXPORTER = "torchscript"
OPSET = 17
FORMAT_VERSION = 1  # bump when a graph's inputs or outputs change, so old caches are not reused
UNET_INPUTS = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")


@dataclass(frozen=True)
class Graph:
    """An exported graph on disk and what its export cost (0 on a cache hit)."""

    path: Path
    key: str
    exported: bool
    seconds: float


def residual_shapes(unet_config: Any, *, height: int, width: int) -> list[tuple[int, int, int]]:
    """(channels, h, w) of the down-block residuals a ControlNet adds, then the mid block's."""
    channels = list(unet_config.block_out_channels)
    layers = unet_config.layers_per_block
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    shapes = [(channels[0], height, width)]
    for index, count in enumerate(layers):
        shapes += [(channels[index], height, width)] * count
        if index < len(channels) - 1:
            height, width = height // 2, width // 2
            shapes.append((channels[index], height, width))
    shapes.append((channels[-1], height, width))
    return shapes


def unet_input_names(unet_config: Any) -> list[str]:
    count = len(residual_shapes(unet_config, height=8, width=8)) - 1
    return [*UNET_INPUTS, *(f"down_{i}" for i in range(count)), "mid"]


class GraphCache:
    """Exported graphs under `root`, keyed by what they were exported from."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def get(
        self, component: str, key_parts: dict[str, Any], export: Callable[[Path], None]
    ) -> Graph:
        """The cached graph for `key_parts`, exporting it with `export(path)` when absent."""
        key = _digest({"component": component, "format": FORMAT_VERSION, **key_parts})
        target = self.root / f"{component}-{key}"
        path = target / "model.onnx"
        if path.is_file():
            return Graph(path, key, exported=False, seconds=0.0)
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / f"{component}-{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if path.is_file():  # another worker exported it while we waited
                return Graph(path, key, exported=False, seconds=0.0)
            staging = Path(tempfile.mkdtemp(prefix=f".{component}-", dir=self.root))
            started = time.perf_counter()
            try:
                export(staging / "model.onnx")
                (staging / "meta.json").write_text(
                    json.dumps({"component": component, **key_parts}, indent=2, default=str)
                )
                staging.rename(target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
            seconds = time.perf_counter() - started
        log.info("onnx.exported", extra={"component": component, "seconds": round(seconds, 2)})
        return Graph(path, key, exported=True, seconds=seconds)


# --- graph wrappers: plain tensor inputs and outputs, named forward parameters -----------------


class _UNetGraph(torch.nn.Module):
    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids, *residuals):
        # NOTE: the class's forward, not the module's call: the serving backend replaces the
        # instance's `forward` with its ONNX Runtime stand-in.
        return type(self.unet).forward(
            self.unet,
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            down_block_additional_residuals=list(residuals[:-1]),
            mid_block_additional_residual=residuals[-1],
            return_dict=False,
        )[0]


class _ControlNetGraph(torch.nn.Module):
    def __init__(self, controlnet: torch.nn.Module) -> None:
        super().__init__()
        self.controlnet = controlnet

    def forward(
        self, sample, timestep, encoder_hidden_states, controlnet_cond, text_embeds, time_ids
    ):
        down, mid = type(self.controlnet).forward(
            self.controlnet,
            sample,
            timestep,
            encoder_hidden_states=encoder_hidden_states,
            controlnet_cond=controlnet_cond,
            conditioning_scale=1.0,  # the stand-in scales the outputs, as the module would
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            return_dict=False,
        )
        return (*down, mid)


class _DecoderGraph(torch.nn.Module):
    def __init__(self, vae: torch.nn.Module) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return type(self.vae).decode(self.vae, latents, return_dict=False)[0]


def _conditioning(unet_config: Any, batch: int, dtype: torch.dtype, device) -> list[torch.Tensor]:
    """Example encoder states, pooled text embeddings and time ids for a batch."""
    pooled_dim = unet_config.projection_class_embeddings_input_dim - 6 * (
        unet_config.addition_time_embed_dim
    )
    return [
        torch.randn(batch, 77, unet_config.cross_attention_dim, dtype=dtype, device=device),
        torch.randn(batch, pooled_dim, dtype=dtype, device=device),
        torch.randn(batch, 6, dtype=dtype, device=device),
    ]


def export_unet(unet, path: Path, *, latent_size: int) -> None:
    """Export `unet` (with whatever LoRA layers it holds, as they are) to `path`."""
    dtype, device = unet.dtype, unet.device
    batch = 2  # NOTE: an example batch of 1 lets exporters specialise the batch axis to 1
    sample = torch.randn(batch, unet.config.in_channels, latent_size, latent_size, dtype=dtype)
    residuals = [
        torch.zeros(batch, *shape, dtype=dtype)
        for shape in residual_shapes(unet.config, height=latent_size, width=latent_size)
    ]
    timestep = torch.tensor([500.0], dtype=torch.float32)
    args = [sample, timestep, *_conditioning(unet.config, batch, dtype, "cpu"), *residuals]
    names = unet_input_names(unet.config)
    dynamic = {name: {0: "batch"} for name in names if name != "timestep"}
    for name in ["sample", *names[len(UNET_INPUTS) :]]:
        dynamic[name] = {0: "batch", 2: f"{name}_h", 3: f"{name}_w"}
    dynamic["noise_pred"] = {0: "batch", 2: "height", 3: "width"}
    _export(
        _UNetGraph(unet),
        [arg.to(device) for arg in args],
        path,
        inputs=names,
        outputs=["noise_pred"],
        dynamic=dynamic,
    )


def export_controlnet(controlnet, unet_config: Any, path: Path, *, latent_size: int) -> None:
    dtype, device = controlnet.dtype, controlnet.device
    batch = 2
    pixels = latent_size * 8
    args = [
        torch.randn(batch, unet_config.in_channels, latent_size, latent_size, dtype=dtype),
        torch.tensor([500.0], dtype=torch.float32),
        *_conditioning(unet_config, batch, dtype, "cpu"),
    ]
    args.insert(3, torch.rand(batch, 3, pixels, pixels, dtype=dtype))
    count = len(residual_shapes(unet_config, height=8, width=8))
    outputs = [*(f"down_{i}" for i in range(count - 1)), "mid"]
    inputs = [
        "sample",
        "timestep",
        "encoder_hidden_states",
        "controlnet_cond",
        "text_embeds",
        "time_ids",
    ]
    dynamic = {name: {0: "batch"} for name in inputs if name != "timestep"}
    dynamic["sample"] = {0: "batch", 2: "latent_h", 3: "latent_w"}
    dynamic["controlnet_cond"] = {0: "batch", 2: "pixel_h", 3: "pixel_w"}
    for name in outputs:
        dynamic[name] = {0: "batch", 2: f"{name}_h", 3: f"{name}_w"}
    _export(
        _ControlNetGraph(controlnet),
        [arg.to(device) for arg in args],
        path,
        inputs=inputs,
        outputs=outputs,
        dynamic=dynamic,
    )


def export_decoder(vae, path: Path, *, latent_size: int) -> None:
    latents = torch.randn(
        2, vae.config.latent_channels, latent_size, latent_size, dtype=vae.dtype
    ).to(vae.device)
    _export(
        _DecoderGraph(vae),
        [latents],
        path,
        inputs=["latents"],
        outputs=["image"],
        dynamic={
            "latents": {0: "batch", 2: "latent_h", 3: "latent_w"},
            "image": {0: "batch", 2: "height", 3: "width"},
        },
    )


def fused_copy(unet):
    """A copy of `unet` with its active LoRA adapters merged into the base weights.

    The serving UNet is never fused: fuse-then-unfuse does not restore the base weights exactly.
    """
    forward = unet.__dict__.pop("forward", None)  # the stand-in holds sessions: never copy it
    try:
        fused = copy.deepcopy(unet)
    finally:
        if forward is not None:
            unet.forward = forward
    fused.fuse_lora()  # merges the active adapters at their current scales
    return fused


def _export(module, args, path: Path, *, inputs, outputs, dynamic) -> None:
    module.eval()
    with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(
            module,
            tuple(args),
            str(path),
            input_names=list(inputs),
            output_names=list(outputs),
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )


def _digest(parts: dict[str, Any]) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:20]
