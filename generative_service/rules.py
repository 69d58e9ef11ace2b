"""Request rules and limits that are not per-field schema bounds.

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

from typing import Any

from generative_service.errors import InvalidRequest

CONTROL_COST_FACTOR = 1.5
UPSCALE_COST_FACTORS = {2: 2.0, 4: 4.0}
DEFAULT_MAX_JOB_COST = 1_000_000_000
JOB_COST_FORMULA = "width * height * steps * num_images * control_factor * upscale_factor"


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
