"""LoRA adapters for a compiled UNet: fixed, always-active slots that requests hot-swap into.

The slots exist before the UNet is compiled (peft's `prepare_model_for_compiled_hotswap`), so
loading, switching, re-scaling or turning off an adapter changes tensor values only, never the
graph: the weights are copied in place, scales are tensors filled in place, and "no LoRA" is
scale 0 in every slot (adding 0.0 is exact, so the base image is unchanged).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
from safetensors import safe_open

from generative_service.engine.hashing import FileHasher
from generative_service.engine.lora import LoraManager
from generative_service.errors import LoraError, NotFound
from generative_service.lora_store import get_lora_store
from generative_service.schemas import LoraSpec

log = logging.getLogger(__name__)
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")


class SlotLoras:
    """LoRA adapters for a compiled UNet: fixed, always-active slots filled by hot-swapping.

    Same interface as `LoraManager` (activate / text_signature / check_known / loaded / store).
    """

    def __init__(self, pipe, settings, *, hasher: FileHasher) -> None:
        self.pipe = pipe
        self.settings = settings
        self.hasher = hasher
        self.store = get_lora_store(settings)  # Engine.describe lists its names
        self.rank = settings.lora_hotswap_rank
        self.slots = [f"slot{index}" for index in range(settings.compile_lora_slots)]
        self._held: list[tuple[str, tuple[int, int], str] | None] = [None] * len(self.slots)
        self._scales: list[float | None] = [None] * len(self.slots)
        self._base: dict[str, list[tuple[torch.Tensor, float]]] = {}
        self.targets: list[str] = []
        if self.rank and self.slots:
            self._prepare()

    @property
    def loaded(self) -> list[str]:
        return [held[0] for held in self._held if held is not None]

    check_known = LoraManager.check_known  # it reads only self.store

    def text_signature(self) -> str:
        return ""  # text-encoder LoRAs are refused by this backend

    def activate(self, specs: list[LoraSpec]) -> list[dict]:
        """Hot-swap `specs` into the slots and set their scales; [] sets every scale to 0."""
        if specs and not (self.rank and self.slots):
            raise LoraError(
                "loras",
                "LoRAs need GENSVC_LORA_HOTSWAP_RANK > 0 and GENSVC_COMPILE_LORA_SLOTS > 0 with GENSVC_ENGINE_BACKEND=compile",
            )
        if len(specs) > len(self.slots):
            raise LoraError(
                "loras",
                f"at most {len(self.slots)} adapters at once on this worker (GENSVC_COMPILE_LORA_SLOTS)",
            )
        records = []
        for index, spec in enumerate(specs):
            sha256 = self._swap_in(index, spec.name)
            records.append({"name": spec.name, "scale": spec.scale, "sha256": sha256})
        for index in range(len(self.slots)):
            self._set_scale(index, specs[index].scale if index < len(specs) else 0.0)
        return records

    # --- internals ---------------------------------------------------------------------------------

    def _prepare(self) -> None:
        """Zero adapters in every slot, active at once, scalings as tensors: then compile."""
        from peft import LoraConfig
        from peft.utils.hotswap import prepare_model_for_compiled_hotswap

        unet = self.pipe.unet
        self.targets = _target_modules(unet, self.settings)
        config = LoraConfig(
            r=self.rank, lora_alpha=self.rank, target_modules=self.targets, init_lora_weights=False
        )
        for slot in self.slots:
            unet.add_adapter(config, adapter_name=slot)
        unet.set_adapters(self.slots, weights=[1.0] * len(self.slots))
        prepare_model_for_compiled_hotswap(unet, target_rank=self.rank, config=unet.peft_config)
        with torch.no_grad():
            for name, parameter in unet.named_parameters():
                if ".lora_B." in name:
                    parameter.zero_()
        for index, slot in enumerate(self.slots):
            self._base[slot] = self._scalings(slot)
            self._set_scale(index, 0.0)

    def _scalings(self, slot: str) -> list[tuple[torch.Tensor, float]]:
        from peft.tuners.lora import LoraLayer

        return [
            (module.scaling[slot], float(module.scaling[slot]))
            for module in self.pipe.unet.modules()
            if isinstance(module, LoraLayer) and slot in module.scaling
        ]

    def _set_scale(self, index: int, scale: float) -> None:
        if self._scales[index] == scale:
            return
        with torch.no_grad():
            for tensor, base in self._base[self.slots[index]]:
                tensor.fill_(base * scale)
        self._scales[index] = scale

    def _swap_in(self, index: int, name: str) -> str:
        field = f"loras[{index}]"
        try:
            path = self.store.fetch(name)
        except (NotFound, FileNotFoundError):
            known = self.store.names()
            raise LoraError(
                f"{field}.name", f"unknown LoRA {name!r}; known: {', '.join(known) or 'none'}"
            ) from None
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        held = self._held[index]
        if held is not None and held[:2] == (name, stamp):
            return held[2]
        self._check_file(path, field=field, name=name)
        slot = self.slots[index]
        started = time.perf_counter()
        try:
            self.pipe.load_lora_weights(
                str(path.parent), weight_name=path.name, adapter_name=slot, hotswap=True
            )
        except Exception as exc:  # noqa: BLE001 - the slot may be half-written: zero it
            self._zero_slot(slot)
            self._held[index] = None
            raise LoraError(
                field, f"LoRA {name!r} could not be hot-swapped: {_short(exc)}"
            ) from None
        self._base[slot] = self._scalings(slot)  # the new adapter's alpha / rank
        self._scales[index] = None
        sha256 = self.hasher.sha256(path)
        self._held[index] = (name, stamp, sha256)
        log.info(
            "lora.hotswapped",
            extra={"lora": name, "slot": slot, "ms": round((time.perf_counter() - started) * 1000)},
        )
        return sha256

    def _zero_slot(self, slot: str) -> None:
        with torch.no_grad():
            for name, parameter in self.pipe.unet.named_parameters():
                if f".lora_B.{slot}." in name:
                    parameter.zero_()

    def _check_file(self, path: Path, *, field: str, name: str) -> None:
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
        except Exception as exc:  # noqa: BLE001
            raise LoraError(
                field, f"LoRA {name!r} is not a readable safetensors file: {_short(exc)}"
            ) from None
        if any(key.startswith(("text_encoder", "lora_te")) for key in keys):
            raise LoraError(
                field,
                f"LoRA {name!r} changes the text encoders, which GENSVC_ENGINE_BACKEND=compile does not support",
            )
        modules = {_module_of(key) for key in keys if key.startswith("unet.")}
        missing = sorted(module for module in modules if module and module not in self.targets)
        if missing:
            raise LoraError(
                field,
                f"LoRA {name!r} targets layers the compiled UNet has no LoRA slots for ({missing[0]}, {len(missing)} in all); restart the worker with the file in GENSVC_LORA_DIR",
            )


def _module_of(key: str) -> str | None:
    for marker in (".lora_A.", ".lora_B.", ".lora.down.", ".lora.up."):
        if marker in key:
            return key[len("unet.") : key.index(marker)]
    return None


def _target_modules(unet, settings) -> list[str]:
    """Every UNet layer that the LoRA files present at start touch, plus the attention projections."""
    targets = {
        name
        for name, module in unet.named_modules()
        if isinstance(module, torch.nn.Linear) and name.endswith(DEFAULT_TARGETS)
    }
    store = get_lora_store(settings)
    for name in store.names():
        try:
            with safe_open(str(store.fetch(name)), framework="pt") as handle:
                targets |= {module for key in handle.keys() if (module := _module_of(key))}
        except Exception:  # noqa: BLE001 - a broken file is refused when a request uses it
            continue
    present = dict(unet.named_modules())
    return sorted(name for name in targets if name in present)


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
