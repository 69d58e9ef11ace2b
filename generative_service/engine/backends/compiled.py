"""The torch.compile backend: one compiled UNet graph per served size, no compile in a request.

What would make torch.compile build another graph, and what this backend does instead:
- ControlNet or not: the UNet always takes the ControlNet residuals (zeros without a
  ControlNet: adding 0.0 is exact), so both pipelines call the same graph;
- batch size (1..2*MAX_BATCH_IMAGES UNet rows; CFG doubles them): GENSVC_COMPILE_BATCH picks a
  symbolic batch axis (`mark_dynamic`, `dynamic`) or padding to the largest batch (`pad`); batch 1
  is always padded to 2, because dynamo gives size-1 axes a graph of their own;
- timestep dtype (int64 or float32 by sampler) and memory layout: normalised before the call;
- prompt length (75-token windows): the sequence axis is symbolic;
- loading, switching, re-scaling or turning off a LoRA: slots prepared before compiling
  (slot_loras.py), so only tensor values change;
- image size: each size of GENSVC_COMPILE_SIZES is compiled at start; any other size runs the
  UNet eagerly for that call (`reproducibility.backend.ran` = `eager`, with the reason).

The worker compiles every served size before it reports ready, then runs real jobs (CFG on and
off, each ControlNet) with the compiler's stance `fail_on_recompile`: a shape the warm-up missed
fails the start with a message instead of compiling inside a request. In service the stance is
`eager_on_recompile`, so should a guard still fail, that call runs eagerly rather than compiling.

Compiled code is cached under CACHE_DIR/torch-compile (inductor's FX graph and AOTAutograd
caches), so a second start of the same model only re-traces.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from generative_service.engine.backends.base import Backend, UNetStandIn
from generative_service.engine.backends.onnx_export import residual_shapes
from generative_service.engine.backends.slot_loras import SlotLoras
from generative_service.engine.hashing import FileHasher
from generative_service.errors import ModelLoadError

log = logging.getLogger(__name__)


class CompiledBackend(Backend):
    """Serves the pipelines' UNet through one torch.compile'd function."""

    name = "compile"

    def __init__(self, settings, models) -> None:
        super().__init__(settings, models)
        self.unet = models.pipe.unet
        self.sizes = _parse_sizes(settings.compile_sizes, default=settings)
        self.batch = settings.compile_batch
        self.max_rows = 2 * settings.max_batch_images
        self.serving_stance = "eager_on_recompile"
        self.compile_seconds = 0.0
        self.check_seconds = 0.0
        self._compiled: Any = None
        self._serving = False  # warm-up and served sizes only
        self._zeros: dict[tuple, list[torch.Tensor]] = {}

    def make_loras(self, *, hasher: FileHasher) -> SlotLoras:
        # NOTE: runs before start(): peft's hot-swap preparation must precede compiling.
        return SlotLoras(self.models.pipe, self.settings, hasher=hasher)

    def start(self, engine) -> None:
        """Compile every served size, then check real jobs do not recompile; before ready."""
        _use_cache_dir(Path(self.settings.cache_dir) / "torch-compile")
        limit = max(torch._dynamo.config.recompile_limit, len(self.sizes) + 2)
        torch._dynamo.config.recompile_limit = limit
        self._compiled = torch.compile(
            self._unet_call,
            backend=self.settings.compile_compiler,
            dynamic=True if self.batch == "dynamic" else False,
        )
        self.unet.forward = _UNetStandIn(self, self.unet)
        started = time.perf_counter()
        try:
            with torch.no_grad():
                for width, height in self.sizes:
                    self._warm_up(width, height)
        except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor: stop the worker
            raise ModelLoadError(
                "engine_backend",
                f"compile: torch.compile ({self.settings.compile_compiler}) failed at start: "
                f"{_first_line(exc)}",
            ) from exc
        self.compile_seconds = time.perf_counter() - started
        started = time.perf_counter()
        self._check_real_jobs(engine)
        self.check_seconds = time.perf_counter() - started
        log.info(
            "compile.warmed_up",
            extra={
                "sizes": self.sizes,
                "batch": self.batch,
                "compile_seconds": round(self.compile_seconds, 1),
                "check_seconds": round(self.check_seconds, 1),
            },
        )

    def prepare(self, plan, *, loras: list[dict]) -> dict[str, Any]:
        self._serving = (plan.width, plan.height) in self.sizes
        if not self._serving:
            log.warning("compile.eager_fallback", extra={"size": f"{plan.width}x{plan.height}"})
            return {"name": self.name, "ran": "eager", "reason": "size not compiled"}
        return {"name": self.name, "ran": self.name, "batch": self.batch}

    def running(self):
        return torch.compiler.set_stance(self.serving_stance)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sizes": [f"{width}x{height}" for width, height in self.sizes],
            "batch": self.batch,
            "compiler": self.settings.compile_compiler,
            "compile_seconds": round(self.compile_seconds, 1),
            "lora_slots": self.settings.compile_lora_slots,
        }

    # --- the compiled call -------------------------------------------------------------------------

    def _unet_call(
        self, sample, timestep, encoder_hidden_states, text_embeds, time_ids, *residuals
    ):
        unet = self.unet
        return type(unet).forward(
            unet,
            sample,
            timestep,
            encoder_hidden_states,
            added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids},
            down_block_additional_residuals=residuals[:-1],
            mid_block_additional_residual=residuals[-1],
            return_dict=False,
        )[0]

    def rows(self, batch: int) -> int | None:
        """UNet rows one call of `batch` runs with (None: more than the graph serves)."""
        if batch > self.max_rows:
            return None
        return self.max_rows if self.batch == "pad" else max(batch, 2)

    def call(self, sample, timestep, hidden, text_embeds, time_ids, residuals) -> torch.Tensor:
        batch = sample.shape[0]
        rows = self.rows(batch)
        assert rows is not None
        if residuals is None:
            residuals = self.zero_residuals(rows, sample)
        timestep = torch.as_tensor(timestep, device=sample.device).to(torch.float32)
        inputs = [
            sample,
            timestep.reshape(-1).expand(batch),
            hidden,
            text_embeds,
            time_ids,
            *residuals,
        ]
        inputs = [_pad(tensor, rows) for tensor in inputs]
        if self.batch == "mark_dynamic":
            for tensor in inputs:
                torch._dynamo.mark_dynamic(tensor, 0, min=2, max=self.max_rows)
        if self.batch != "dynamic":
            torch._dynamo.mark_dynamic(inputs[2], 1)  # prompt windows of 77 tokens
        return self._compiled(*inputs)[:batch]

    def zero_residuals(self, rows: int, sample: torch.Tensor) -> list[torch.Tensor]:
        """All-zero ControlNet residuals for a UNet call without a ControlNet (cached per shape)."""
        key = (rows, *sample.shape[2:], sample.dtype, sample.device)
        if key not in self._zeros:
            shapes = residual_shapes(
                self.unet.config, height=sample.shape[2], width=sample.shape[3]
            )
            self._zeros[key] = [
                torch.zeros((rows, *shape), dtype=sample.dtype, device=sample.device)
                for shape in shapes
            ]
        return self._zeros[key]

    # --- start -------------------------------------------------------------------------------------

    def _warm_up(self, width: int, height: int) -> None:
        """Compile the graph of one size (one call: batch, sequence length are symbolic)."""
        config = self.unet.config
        scale = self.models.pipe.vae_scale_factor
        dtype, device = self.models.dtype, self.models.device
        rows = 2

        def tensor(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        embeds = config.projection_class_embeddings_input_dim - 6 * config.addition_time_embed_dim
        started = time.perf_counter()
        with torch.compiler.set_stance("default"):
            self.call(
                tensor(rows, config.in_channels, height // scale, width // scale),
                torch.tensor(999),
                tensor(rows, 77, config.cross_attention_dim),
                tensor(rows, embeds),
                tensor(rows, 6),
                None,
            )
        log.info(
            "compile.size",
            extra={"size": f"{width}x{height}", "seconds": round(time.perf_counter() - started, 1)},
        )

    def _check_real_jobs(self, engine) -> None:
        """One-step real jobs through every pipeline must reuse the graphs (else: fail the start)."""
        from generative_service.engine.engine import EngineJob
        from generative_service.schemas import ControlSpec, GenerationRequest

        width, height = self.sizes[0]
        control_image = _warmup_control_image()
        cases = [(None, 5.0), (None, 1.0)] + [(kind, 5.0) for kind in self.models.control_pipes]
        for kind, guidance in cases:
            request = GenerationRequest(
                prompt="warm-up",
                width=width,
                height=height,
                steps=1,
                seed=0,
                guidance_scale=guidance,
                control=ControlSpec(type=kind, image=control_image) if kind else None,
            )
            stance, self.serving_stance = self.serving_stance, "fail_on_recompile"
            try:
                engine.run([EngineJob("warm-up", request)])
            except Exception as exc:  # noqa: BLE001 - name the failure, stop the worker
                raise ModelLoadError(
                    "engine_backend",
                    f"compile: a real job ({kind or 'no control'}, guidance {guidance}, "
                    f"{width}x{height}) did not reuse the warmed-up graph: {_first_line(exc)}",
                ) from exc
            finally:
                self.serving_stance = stance


class _UNetStandIn(UNetStandIn):
    """The compiled graph for served sizes and batches, else eager."""

    backend: CompiledBackend

    def serves(self, sample: torch.Tensor) -> bool:
        return self.backend._serving and self.backend.rows(sample.shape[0]) is not None

    def graph(self, sample, timestep, hidden, text_embeds, time_ids, residuals) -> torch.Tensor:
        return self.backend.call(sample, timestep, hidden, text_embeds, time_ids, residuals)


# --- helpers ---------------------------------------------------------------------------------------


def _pad(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """`tensor` with `rows` rows (copies of its last row appended), contiguous."""
    missing = rows - tensor.shape[0]
    if missing > 0:
        tensor = torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])
    return tensor.contiguous()


def _use_cache_dir(path: Path) -> None:
    """Keep inductor's caches with the model cache (unless the operator chose a place)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    # NOTE: importing diffusers already sets the variable to torch's default (/tmp/...), and
    # inductor reads it at every cache access: replace the default, keep an operator's choice.
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):
        path.mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)


def _parse_sizes(text: str, *, default) -> list[tuple[int, int]]:
    from generative_service.engine import paths

    if not text.strip():
        side = paths.default_size(default)
        return [(side, side)]
    sizes = []
    for item in text.split(","):
        try:
            width, height = (int(part) for part in item.strip().lower().split("x"))
        except ValueError:
            raise ModelLoadError(
                "compile_sizes", f"{item.strip()!r} is not WIDTHxHEIGHT (e.g. 1024x1024)"
            ) from None
        sizes.append((width, height))
    return sizes


def _warmup_control_image() -> str:
    import base64
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 128, 128)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]
