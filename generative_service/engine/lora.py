"""Runtime LoRA adapters: load by name, keep a bounded LRU in the pipeline, activate per batch.

- Adapters are never fused: disabling them gives the base model's output bit-exactly, and
  switching costs a `set_adapters` call (milliseconds), never a base-model reload.
- Every batch asks the LoRA store for the adapter's current file (`lora_store.py`): a changed
  file (same name, new content: a new cached file, or a new mtime/size locally) is reloaded, a
  deleted one is unknown at once; no batch runs a stale adapter.
- Hot-swap mode (GENSVC_LORA_HOTSWAP_RANK > 0, needed with a compiled UNet): adapters live in a
  fixed set of slots padded to that rank; a new adapter replaces the least recently used slot's
  weights in place, so the compiled graph is reused.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from safetensors import safe_open

from generative_service.engine.hashing import FileHasher
from generative_service.errors import LoraError, NotFound
from generative_service.lora_store import get_lora_store
from generative_service.schemas import LoraSpec
from generative_service.settings import Settings

log = logging.getLogger(__name__)
_A_SUFFIXES = (".lora_A.weight", ".lora.down.weight")
_B_SUFFIXES = (".lora_B.weight", ".lora.up.weight")


@dataclass
class _Adapter:
    name: str
    slot: str
    stamp: tuple[str, int, int]
    sha256: str
    touches_text: bool


class LoraManager:
    """Owns every LoRA adapter loaded into one pipeline (and the pipelines sharing its modules)."""

    def __init__(self, pipe, settings: Settings, *, hasher: FileHasher) -> None:
        self.pipe = pipe
        self.settings = settings
        self.hasher = hasher
        self.store = get_lora_store(settings)
        self.capacity = settings.lora_cache_size
        self.hotswap_rank = settings.lora_hotswap_rank
        self._adapters: OrderedDict[str, _Adapter] = OrderedDict()
        self._active: list[tuple[_Adapter, float]] = []
        self._enabled = False
        if self.hotswap_rank:
            # NOTE: must happen before the first adapter is loaded and before the UNet is compiled.
            pipe.enable_lora_hotswap(target_rank=self.hotswap_rank)

    @property
    def loaded(self) -> list[str]:
        """Names of the adapters held in the pipeline, least recently used first."""
        return list(self._adapters)

    def activate(self, specs: list[LoraSpec]) -> list[dict]:
        """Make exactly `specs` active (with their scales); [] restores the base model exactly.

        Returns the adapters' reproducibility entries ({name, scale, sha256}).

        Raises:
            LoraError: unknown name (lists known ones), too many adapters, broken/incompatible file.
        """
        if not specs:
            self._disable()
            return []
        if len(specs) > self.capacity:
            raise LoraError(
                "loras",
                f"at most {self.capacity} adapters can be active at once (GENSVC_LORA_CACHE_SIZE)",
            )
        pinned = {spec.name for spec in specs}
        try:
            adapters = [
                self._ensure(index, spec.name, pinned=pinned) for index, spec in enumerate(specs)
            ]
            if not self._enabled:
                self.pipe.enable_lora()
                self._enabled = True
            self.pipe.set_adapters(
                [adapter.slot for adapter in adapters],
                adapter_weights=[spec.scale for spec in specs],
            )
        except BaseException:
            # NOTE: whatever failed (a bad file, an evicted slot, set_adapters), the next job must
            # see the exact base model, never the adapters of an earlier job.
            self._disable()
            raise
        self._active = list(zip(adapters, [spec.scale for spec in specs], strict=True))
        return [{"name": a.name, "scale": s, "sha256": a.sha256} for a, s in self._active]

    def text_signature(self) -> str:
        """Identifies active adapters that change the text encoders ('' when none do)."""
        parts = [f"{a.sha256}@{scale:g}" for a, scale in self._active if a.touches_text]
        return ",".join(parts)

    def check_known(self, specs: list[LoraSpec]) -> None:
        """Raise LoraError for a name with no file in the LoRA directory."""
        for index, spec in enumerate(specs):
            if self.store.head(spec.name) is None:
                known = self.store.names()
                raise LoraError(
                    f"loras[{index}].name",
                    f"unknown LoRA {spec.name!r}; known: {', '.join(known) or 'none'}",
                )

    # --- loading ---------------------------------------------------------------------------------

    def _disable(self) -> None:
        """Turn every adapter layer off: the pipeline computes exactly the base model.

        NOTE: decided from what the pipeline holds, not from `_enabled`: after a failed load that
        flag no longer says whether layers are active (the adapter-leak bug).
        """
        if self._adapters or self._present():
            self.pipe.disable_lora()  # LoRA layers then call only their base layer
        self._enabled = False
        self._active = []

    def _present(self) -> set[str]:
        return {a for names in self.pipe.get_list_adapters().values() for a in names}

    def _ensure(self, index: int, name: str, *, pinned: set[str]) -> _Adapter:
        field = f"loras[{index}].name"
        try:
            path = self.store.fetch(name)
            stat = path.stat()
        except (NotFound, FileNotFoundError):
            known = self.store.names()
            raise LoraError(
                field, f"unknown LoRA {name!r}; known: {', '.join(known) or 'none'}"
            ) from None
        stamp = (str(path), stat.st_size, stat.st_mtime_ns)
        current = self._adapters.get(name)
        if current is not None and current.stamp == stamp:
            self._adapters.move_to_end(name)
            return current
        self._check_file(path, field=f"loras[{index}]", name=name)
        slot = self._free_slot(name, pinned=pinned)
        return self._load(path, name=name, slot=slot, stamp=stamp, field=f"loras[{index}]")

    def _free_slot(self, name: str, *, pinned: set[str]) -> str:
        """A slot for `name`: its old slot if reloading, else a new one, evicting the LRU if full."""
        old = self._adapters.pop(name, None)
        if old is not None and not self.hotswap_rank:
            self.pipe.delete_adapters(old.slot)
        if old is not None:
            return old.slot
        if len(self._adapters) >= self.capacity:
            victim = next(item for item in self._adapters.values() if item.name not in pinned)
            del self._adapters[victim.name]
            log.info("lora.evicted", extra={"lora": victim.name})
            if not self.hotswap_rank:
                self.pipe.delete_adapters(victim.slot)
                return _slot_name(name)
            return victim.slot
        if self.hotswap_rank:
            used = {item.slot for item in self._adapters.values()}
            return next(f"slot{k}" for k in range(self.capacity + 1) if f"slot{k}" not in used)
        return _slot_name(name)

    def _load(
        self, path: Path, *, name: str, slot: str, stamp: tuple[str, int, int], field: str
    ) -> _Adapter:
        present = self._present()
        hotswap = bool(self.hotswap_rank) and slot in present
        if self.hotswap_rank and not hotswap and present:
            # A new slot in hot-swap mode: pad it to the target rank too.
            self.pipe.unet.enable_lora_hotswap(
                target_rank=self.hotswap_rank, check_compiled="ignore"
            )
        try:
            with (
                _quiet_diffusers()
            ):  # "no LoRA keys for CLIPTextModel" is expected for UNet-only files
                self.pipe.load_lora_weights(
                    str(path.parent), weight_name=path.name, adapter_name=slot, hotswap=hotswap
                )
        except Exception as exc:  # noqa: BLE001 - any failure means this file is unusable here
            self._recover(slot, hotswap=hotswap)
            raise LoraError(field, f"LoRA {name!r} could not be loaded: {_short(exc)}") from None
        listing = self.pipe.get_list_adapters()
        if slot not in listing.get("unet", []) and not any(slot in v for v in listing.values()):
            self._recover(slot, hotswap=hotswap)
            raise LoraError(field, f"LoRA {name!r} holds no layers this model has")
        touches_text = any(
            slot in listing.get(part, []) for part in ("text_encoder", "text_encoder_2")
        )
        adapter = _Adapter(
            name=name,
            slot=slot,
            stamp=stamp,
            sha256=self.hasher.sha256(path),
            touches_text=touches_text,
        )
        self._adapters[name] = adapter
        self._enabled = False  # a fresh load activates it; activate() sets the real state
        log.info("lora.loaded", extra={"lora": name, "slot": slot, "hotswap": hotswap})
        return adapter

    def _recover(self, slot: str, *, hotswap: bool) -> None:
        """Leave the pipeline usable after a failed load."""
        if hotswap:
            # NOTE: a failed hot-swap can leave layers half-replaced; only a full unload is safe.
            self.pipe.unload_lora_weights()
            self._adapters.clear()
            self.pipe.enable_lora_hotswap(target_rank=self.hotswap_rank, check_compiled="ignore")
        elif slot in self._present():
            self.pipe.delete_adapters(slot)
        self._disable()

    def _check_file(self, path: Path, *, field: str, name: str) -> None:
        """Refuse unreadable files and UNet layers that this model lacks or has another shape."""
        try:
            with safe_open(str(path), framework="pt") as handle:
                keys = list(handle.keys())
                shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in keys}
        except Exception as exc:  # noqa: BLE001
            raise LoraError(
                field, f"LoRA {name!r} is not a readable safetensors file: {_short(exc)}"
            ) from None
        if not keys:
            raise LoraError(field, f"LoRA {name!r} is empty")
        problems = self._unet_mismatches(shapes)
        if problems:
            raise LoraError(
                field,
                f"LoRA {name!r} does not fit this model: {problems[0]} ({len(problems)} problem(s))",
            )

    def _unet_mismatches(self, shapes: dict[str, tuple]) -> list[str]:
        """Diffusers-format UNet keys ('unet.<module>.lora_A.weight') checked against the UNet."""
        unet = self.pipe.unet
        problems: list[str] = []
        for key, shape in shapes.items():
            if not key.startswith("unet."):
                continue  # other formats are converted by diffusers; its own errors apply
            suffix = next((s for s in _A_SUFFIXES + _B_SUFFIXES if key.endswith(s)), None)
            if suffix is None:
                continue
            module_name = key[len("unet.") : -len(suffix)]
            try:
                module = unet.get_submodule(module_name)
            except AttributeError:
                problems.append(f"layer {module_name} not found")
                continue
            base = getattr(module, "base_layer", module)
            expected = (
                getattr(base, "in_features", None)
                if suffix in _A_SUFFIXES
                else getattr(base, "out_features", None)
            )
            actual = shape[1] if suffix in _A_SUFFIXES else shape[0]
            if expected is not None and len(shape) == 2 and expected != actual:
                problems.append(
                    f"layer {module_name} expects {expected} features, file has {actual}"
                )
        return problems


def target_layers(pipe) -> dict[str, dict[str, list[int]]]:
    """Weight shape of every layer a LoRA can target, per pipeline part (published for the
    gateway's upload check, generative_service/lora_fit.py). Call before any adapter is loaded."""
    import torch

    layers: dict[str, dict[str, list[int]]] = {}
    for part in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, part, None)
        if not isinstance(model, torch.nn.Module):
            continue
        layers[part] = {
            name: list(module.weight.shape)
            for name, module in model.named_modules()
            if isinstance(module, torch.nn.Linear | torch.nn.Conv2d)
        }
    return layers


@contextlib.contextmanager
def _quiet_diffusers():
    logger = logging.getLogger("diffusers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            # Several adapters in one model is exactly what the LRU does.
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")
            yield
    finally:
        logger.setLevel(level)


def _slot_name(name: str) -> str:
    # NOTE: peft adapter names become ModuleDict keys, which may not contain '.'.
    return "lora_" + hashlib.sha1(name.encode()).hexdigest()[:12]


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:300]
