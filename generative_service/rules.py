"""Every request rule and limit, in one place. Imports nothing heavy: the schema, the gateway's
checks, the queue, the batch filler and the engine all read it.

A rule with a fixed bound is a constant here that `GenerationRequest` (schemas.py) declares on
its field. A rule that also depends on configuration (sizes up to GENSVC_MAX_SIDE, images up to
GENSVC_MAX_BATCH_IMAGES) is a `*_problem` function: it returns the reason a value breaks the rule,
or None, and each caller raises its own error type naming the field. `limits(settings)` is the
`limits` block that GET /v1/models serves, whether a worker or the gateway's settings fill it.

Job cost: what one job asks of a worker, in "pixel-steps"::

    cost = width x height x steps x num_images x control_factor x upscale_factor

    control_factor = 1.5 with a ControlNet (`control` set), else 1
    upscale_factor = 2 for `upscale: 2`, 4 for `upscale: 4`, else 1

A job whose cost exceeds GENSVC_MAX_JOB_COST is refused at submit (422). The default,
1,000,000,000, admits four 1024x1024 images at 150 steps, or at 30 steps with a canny ControlNet
and a 4x upscale, and refuses 2048x2048 x 150 steps x 4 images (with or without extras).
`GET /v1/models` publishes these inputs (`job_cost`) so a client can check before it submits.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

from generative_service.errors import InvalidRequest

# --- fixed bounds ---------------------------------------------------------------------------------
SAMPLERS = ("dpmpp_2m_karras", "euler_a", "euler", "ddim", "dpmpp_2m", "unipc")
DEFAULT_SAMPLER = "dpmpp_2m_karras"
MIN_STEPS, MAX_STEPS, DEFAULT_STEPS = 1, 150, 30
MIN_SIDE, SIDE_MULTIPLE = 64, 8
MAX_SEED = 2**63  # seeds are in [0, MAX_SEED)
# A seed the service picks is below this: A1111's range, and exact as a JavaScript number.
RANDOM_SEEDS = 2**32
MAX_IMAGES = 4  # per job, whatever the batch size
MIN_GUIDANCE, MAX_GUIDANCE, DEFAULT_GUIDANCE = 0.0, 30.0, 7.5
MAX_NEGATIVE_GUIDANCE = 10.0  # GENSVC_NEGATIVE_GUIDANCE, a multiple of the guidance scale
MAX_PROMPT_CHARS = 4000  # prompt and negative prompt each
MAX_LORAS = 8  # adapters per job
LORA_NAME_MAX = 128
LORA_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
LORA_NAME_RULE = (
    f"1-{LORA_NAME_MAX} letters, digits, '_', '.' or '-' starting with a letter or digit"
)
MIN_LORA_SCALE, MAX_LORA_SCALE = -4.0, 4.0
MAX_CONDITIONING_SCALE = 2.0
MAX_PREVIEW_EVERY = MAX_STEPS
MIN_PREVIEW_PX, MAX_PREVIEW_PX = 16, 1024
MAX_WEBHOOK_URL_CHARS = 2048
MAX_METADATA_DEPTH = 32  # levels of objects/arrays in `metadata`

_LORA_NAME = re.compile(LORA_NAME_PATTERN)

# --- job cost (see the module docstring) ---------------------------------------------------------
CONTROL_COST_FACTOR = 1.5
UPSCALE_COST_FACTORS = {2: 2.0, 4: 4.0}
DEFAULT_MAX_JOB_COST = 1_000_000_000
JOB_COST_FORMULA = "width * height * steps * num_images * control_factor * upscale_factor"


class _Limits(Protocol):
    max_side: int
    max_batch_images: int
    max_control_pixels: int
    max_metadata_bytes: int
    max_request_bytes: int
    max_lora_bytes: int
    lora_cache_size: int


# --- rules that depend on configuration -----------------------------------------------------------
def side_problem(value: int, max_side: int | None = None) -> str | None:
    """Why `value` is no valid width or height (None when it is): at least MIN_SIDE, a multiple
    of SIDE_MULTIPLE and, with `max_side`, at most GENSVC_MAX_SIDE."""
    if value < MIN_SIDE:
        return f"must be at least {MIN_SIDE}"
    if value % SIDE_MULTIPLE:
        return f"must be a multiple of {SIDE_MULTIPLE}, got {value}"
    if max_side is not None and value > max_side:
        return f"must be at most {max_side} (GENSVC_MAX_SIDE), got {value}"
    return None


def images_problem(count: int, max_batch_images: int) -> str | None:
    """Why a job may not ask for `count` images on a server with this batch size."""
    if count > max_batch_images:
        return f"must be at most {max_batch_images} (GENSVC_MAX_BATCH_IMAGES), got {count}"
    return None


def steps_problem(steps: int) -> str | None:
    if not MIN_STEPS <= steps <= MAX_STEPS:
        return f"must be between {MIN_STEPS} and {MAX_STEPS}, got {steps}"
    return None


def seed_problem(seed: int | None) -> str | None:
    if seed is not None and not 0 <= seed < MAX_SEED:
        return f"must be in [0, 2**63), got {seed}"
    return None


def sampler_problem(name: str) -> str | None:
    if name not in SAMPLERS:
        return f"unknown sampler {name!r}; known: {', '.join(SAMPLERS)}"
    return None


def metadata_problem(size: int, max_metadata_bytes: int) -> str | None:
    if size > max_metadata_bytes:
        return f"must be at most {max_metadata_bytes} bytes as JSON, got {size}"
    return None


def lora_name_ok(name: str) -> bool:
    # NOTE: fullmatch: with match, `$` also matches before a final newline ("abc\n" passed).
    return len(name) <= LORA_NAME_MAX and _LORA_NAME.fullmatch(name) is not None


def limits(settings: _Limits) -> dict[str, Any]:
    """The `limits` block of GET /v1/models."""
    return {
        "min_side": MIN_SIDE,
        "max_side": settings.max_side,
        "side_multiple": SIDE_MULTIPLE,
        "max_batch_images": settings.max_batch_images,
        "max_images_per_job": min(MAX_IMAGES, settings.max_batch_images),
        "max_steps": MAX_STEPS,
        "min_guidance": MIN_GUIDANCE,
        "max_guidance": MAX_GUIDANCE,
        "min_lora_scale": MIN_LORA_SCALE,
        "max_lora_scale": MAX_LORA_SCALE,
        "max_conditioning_scale": MAX_CONDITIONING_SCALE,
        "max_prompt_chars": MAX_PROMPT_CHARS,
        "max_control_pixels": settings.max_control_pixels,
        "max_active_loras": settings.lora_cache_size,
        "max_metadata_bytes": settings.max_metadata_bytes,
        "max_request_bytes": settings.max_request_bytes,
        "max_lora_bytes": settings.max_lora_bytes,
    }


# --- job cost -------------------------------------------------------------------------------------
def job_cost(
    *,
    width: int,
    height: int,
    steps: int,
    num_images: int,
    control: bool = False,
    upscale: int | None = None,
) -> int:
    """The cost of one job (see the module docstring), rounded to a whole number."""
    factor = (CONTROL_COST_FACTOR if control else 1.0) * UPSCALE_COST_FACTORS.get(upscale or 1, 1.0)
    return round(width * height * steps * num_images * factor)


def check_job_cost(request: Any, *, default_size: int, max_cost: int) -> int:
    """Refuse a request whose cost exceeds `max_cost`. Returns the cost.

    Raises:
        InvalidRequest: naming the fields that make up the cost, the cost and the limit.
    """
    width, height = request.width or default_size, request.height or default_size
    control = request.control is not None
    cost = job_cost(width=width, height=height, steps=request.steps,
                    num_images=request.num_images, control=control, upscale=request.upscale)  # fmt: skip
    if cost <= max_cost:
        return cost
    fields = ["width", "height", "steps", "num_images"]
    fields += ["control"] if control else []
    fields += ["upscale"] if request.upscale else []
    raise InvalidRequest(
        ",".join(fields),
        f"job cost {cost:,} ({width}x{height} x {request.steps} steps x {request.num_images} "
        f"image(s)"
        + (f" x {CONTROL_COST_FACTOR} ControlNet" if control else "")
        + (f" x {UPSCALE_COST_FACTORS[request.upscale]:g} upscale" if request.upscale else "")
        + f") is above the limit {max_cost:,} (GENSVC_MAX_JOB_COST); use fewer pixels, steps "
        "or images",
        details={"cost": cost, "max_job_cost": max_cost},
    )


def job_cost_info(max_cost: int) -> dict[str, Any]:
    """The `job_cost` block of GET /v1/models: the formula's inputs and the limit."""
    return {
        "formula": JOB_COST_FORMULA,
        "control_factor": CONTROL_COST_FACTOR,
        "upscale_factors": {str(k): v for k, v in UPSCALE_COST_FACTORS.items()},
        "max_job_cost": max_cost,
    }
