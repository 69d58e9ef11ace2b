"""What every engine backend offers the Engine (per-call preparation, a description) and the
stand-ins that put a backend's graphs in place of the pipelines' modules."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Backend:
    """Runs the pipeline's UNet/ControlNet/VAE as they are (PyTorch eager): the default.

    Subclasses change how those modules run; the diffusers pipeline, the schedulers, the step
    callback (previews, cancel) and the per-image generators and guidance stay the same.
    """

    name = "eager"

    def __init__(self, settings, models) -> None:
        self.settings = settings
        self.models = models

    def make_loras(self, *, hasher):
        """The LoRA manager this backend's modules need (runtime peft adapters by default)."""
        from generative_service.engine.lora import LoraManager

        return LoraManager(self.models.pipe, self.settings, hasher=hasher)

    def start(self, engine) -> None:
        """Last step of the engine's start, before the worker reports ready (warm-up)."""

    def running(self):
        """Context of one pipeline call."""
        return contextlib.nullcontext()

    def prepare(self, plan, *, loras: list[dict]) -> dict[str, Any]:
        """Get ready for one pipeline call of `plan` with the active `loras`.

        Returns the backend part of the job's reproducibility record.
        """
        return {"name": self.name, "ran": self.name}

    def describe(self) -> dict[str, Any]:
        """The backend part of GET /v1/models."""
        return {"name": self.name}


class StandIn:
    """A backend's replacement for one module's `forward`: the module's own code is the fallback.

    Put on the module instance (`module.forward = ...`), so the diffusers pipelines call it
    unchanged; a deep copy of the module (e.g. to fuse LoRAs) shares it rather than copying
    the backend.
    """

    def __init__(self, backend: Backend, module: torch.nn.Module) -> None:
        self.backend = backend
        self.module = module

    def __deepcopy__(self, memo):
        return self

    def eager(self, *args, **kwargs):
        return type(self.module).forward(self.module, *args, **kwargs)


class UNetStandIn(StandIn):
    """The UNet's `forward`: the backend's graph for the calls it serves, else the module's own.

    Subclasses say which calls they serve (`serves`) and run them (`graph`); ControlNet
    residuals reach `graph` as one list (down blocks, then mid block), or None without one.
    """

    def serves(self, sample: torch.Tensor) -> bool:
        raise NotImplementedError

    def graph(self, sample, timestep, hidden, text_embeds, time_ids, residuals) -> torch.Tensor:
        raise NotImplementedError

    def __call__(
        self,
        sample,
        timestep,
        encoder_hidden_states,
        *,
        added_cond_kwargs=None,
        down_block_additional_residuals=None,
        mid_block_additional_residual=None,
        return_dict=True,
        **extra,
    ):
        unused = {name: value for name, value in extra.items() if value is not None}
        if unused or added_cond_kwargs is None or not self.serves(sample):
            return self.eager(
                sample,
                timestep,
                encoder_hidden_states,
                added_cond_kwargs=added_cond_kwargs,
                down_block_additional_residuals=down_block_additional_residuals,
                mid_block_additional_residual=mid_block_additional_residual,
                return_dict=return_dict,
                **extra,
            )
        residuals = None
        if down_block_additional_residuals is not None:
            residuals = [*down_block_additional_residuals, mid_block_additional_residual]
        out = self.graph(
            sample,
            timestep,
            encoder_hidden_states,
            added_cond_kwargs["text_embeds"],
            added_cond_kwargs["time_ids"],
            residuals,
        )
        if not return_dict:
            return (out,)
        from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

        return UNet2DConditionOutput(sample=out)
