"""Samplers: a fresh diffusers scheduler per pipeline call, built from the model's base config.

NOTE: schedulers keep per-run state (step index, model output history). Sharing one instance
between runs (or threads) leaks that state; every pipeline call therefore gets a new one.
`Schedulers` builds each sampler's scheduler from the config once and hands out copies of that
untouched instance (a copy costs a quarter of `from_config`, which parses signatures).
"""

from __future__ import annotations

import copy
import functools
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UniPCMultistepScheduler,
)

from generative_service.errors import InvalidRequest
from generative_service.rules import DEFAULT_SAMPLER, SAMPLERS, sampler_problem

__all__ = ["DEFAULT_SAMPLER", "Schedulers", "make_scheduler", "x0_prediction"]

# name -> (scheduler class, overrides of the base config)
_SAMPLERS: dict[str, tuple[type[Any], dict[str, Any]]] = {
    # DPM++ 2M Karras. NOTE: keep the default final_sigmas_type="zero".
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": False},
    ),
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    # NOTE: latents must never be clipped to [-1, 1]; a config saved from another scheduler class
    # lacks these keys and DDIM's own defaults (clip on) then draw the wrong image. SDXL's values:
    "ddim": (DDIMScheduler, {"clip_sample": False, "set_alpha_to_one": False}),
    "unipc": (UniPCMultistepScheduler, {}),
}
assert set(_SAMPLERS) == set(SAMPLERS), "rules.SAMPLERS and engine samplers must agree"


def make_scheduler(name: str, base_config: Any):
    """A new scheduler for sampler `name`, configured from the model's scheduler config.

    The returned scheduler also records each step's x0 prediction (see `x0_prediction`).

    Raises:
        InvalidRequest: unknown sampler (field `sampler`).
    """
    scheduler = _build(name, base_config)
    _record_x0(scheduler)
    return scheduler


class Schedulers:
    """`make_scheduler` for one model's config, each sampler built once and copied per call."""

    def __init__(self, base_config: Any) -> None:
        self.base_config = base_config
        self._unused: dict[str, Any] = {}  # never stepped, never handed out

    def new(self, name: str):
        """A new scheduler for sampler `name` (raises InvalidRequest like `make_scheduler`)."""
        template = self._unused.get(name)
        if template is None:
            template = self._unused[name] = _build(name, self.base_config)
        scheduler = copy.deepcopy(template)
        _record_x0(scheduler)
        return scheduler


def _build(name: str, base_config: Any):
    problem = sampler_problem(name)
    if problem:
        raise InvalidRequest("sampler", problem)
    cls, overrides = _SAMPLERS[name]
    return cls.from_config(base_config, **overrides)


def scheduler_record(scheduler) -> dict[str, Any]:
    """The scheduler's class and full config, for the reproducibility record."""
    config = {
        key: value for key, value in dict(scheduler.config).items() if not key.startswith("_")
    }
    return {"class": type(scheduler).__name__, "config": _jsonable(config)}


def x0_prediction(scheduler) -> torch.Tensor | None:
    """The latest denoised (x0) estimate of the running scheduler, or None before the first step."""
    x0 = getattr(scheduler, "_gensvc_x0", None)
    if x0 is not None:
        return x0
    # Multistep solvers (DPM++ with dpmsolver++, UniPC with predict_x0) keep x0 as model output.
    outputs = getattr(scheduler, "model_outputs", None)
    if outputs and outputs[-1] is not None:
        return outputs[-1]
    return None


def _record_x0(scheduler) -> None:
    """Wrap this instance's `step` so the x0 estimate that Euler/DDIM return is kept for previews."""
    original = scheduler.step

    # NOTE: functools.wraps keeps step's signature visible: diffusers passes `generator` (ancestral
    # samplers' noise) only when inspect.signature(scheduler.step) lists it.
    @functools.wraps(original)
    def step(*args: Any, return_dict: bool = True, **kwargs: Any):
        output = original(*args, return_dict=True, **kwargs)
        scheduler._gensvc_x0 = getattr(output, "pred_original_sample", None)
        return output if return_dict else (output.prev_sample,)

    scheduler.step = step


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)
