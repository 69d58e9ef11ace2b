"""Job cost cap: pixels x steps x images, with ControlNet and upscale factors (rules.job_cost)."""

from __future__ import annotations

import base64
import io

from api_helpers import check_error
from PIL import Image

from generative_service import rules


def _png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


HUGE = {"prompt": "a seven", "width": 2048, "height": 2048, "steps": 150, "num_images": 4,
        "upscale": 4, "control": {"type": "canny", "image": _png()}}  # fmt: skip
NORMAL = {"prompt": "a seven", "width": 1024, "height": 1024, "steps": 30, "num_images": 4}


def test_the_gpu_hostage_request_is_refused_naming_fields_and_limit(api_client, settings, redis):
    response = api_client.post("/v1/jobs", json=HUGE)
    check_error(
        response,
        422,
        "invalid_request",
        "width,height,steps,num_images,control,upscale: job cost 15,099,494,400",
    )
    message = response.json()["error"]["message"]
    assert "above the limit 1,000,000,000 (GENSVC_MAX_JOB_COST)" in message
    assert response.json()["error"]["details"] == {"cost": 15_099_494_400, "max_job_cost": 10**9}
    assert api_client.get("/v1/jobs").json()["data"] == []  # nothing was queued


def test_a_normal_large_job_is_accepted(api_client):
    assert api_client.post("/v1/jobs", json=NORMAL).status_code == 202
    with_extras = {**NORMAL, "upscale": 4, "control": {"type": "canny", "image": _png()}}
    assert (
        rules.job_cost(width=1024, height=1024, steps=30, num_images=4, control=True, upscale=4)
        < 10**9
    )
    assert api_client.post("/v1/jobs", json={**NORMAL, "steps": 150}).status_code == 202
    # The cost rule is checked before any model-dependent rule (the tiny test model has no ControlNet).
    assert "job cost" not in api_client.post("/v1/jobs", json=with_extras).text


def test_the_limit_is_a_setting_and_defaults_fill_the_size(make_settings, make_api_client):
    client = make_api_client(make_settings(max_job_cost=64 * 64 * 10))
    assert client.post("/v1/jobs", json={"prompt": "a", "steps": 10}).status_code == 202
    check_error(
        client.post("/v1/jobs", json={"prompt": "a", "steps": 11}),
        422,
        "invalid_request",
        "width,height,steps,num_images: job cost 45,056 (64x64 x 11 steps x 1 image(s))",
    )


def test_models_publishes_the_formula_inputs_and_the_limit(api_client):
    models = api_client.get("/v1/models").json()
    assert models["limits"]["max_job_cost"] == 10**9
    assert models["job_cost"] == {
        "formula": "width * height * steps * num_images * control_factor * upscale_factor",
        "control_factor": 1.5,
        "upscale_factors": {"2": 2.0, "4": 4.0},
        "max_job_cost": 10**9,
    }
