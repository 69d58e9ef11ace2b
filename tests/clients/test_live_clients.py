"""Clients nobody here wrote, against a live gateway (and a real worker on the tiny model):
the official `openai` package on /openai/v1 and `webuiapi` (AUTOMATIC1111's API) on /sdapi/v1.

One service serves both clients (a worker start is the slow part); each client has its own key,
so each sees only its own jobs on /v1.
"""

from __future__ import annotations

import base64
import io
import json

import httpx
import openai
import pytest
import webuiapi
from PIL import Image

OPENAI_KEY = "sk-test-openai"
A1111_KEY = "sd-test-key"


@pytest.fixture
def settings(make_settings):
    return make_settings(api_keys=[OPENAI_KEY, A1111_KEY], max_batch_images=2, lora_dir=None)


def _openai(service, key: str = OPENAI_KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{service.base_url}/openai/v1", api_key=key, max_retries=0)


def _webui(service) -> webuiapi.WebUIApi:
    """A1111's `--api-auth` style: HTTP Basic, the API key as the password."""
    host, port = service.base_url.removeprefix("http://").split(":")
    return webuiapi.WebUIApi(host=host, port=int(port), username="anyone", password=A1111_KEY)


@pytest.mark.timeout(900)  # a worker start and five small jobs; minutes on a loaded CI machine
def test_openai_and_webuiapi_generate_through_the_queue(settings, start_service):
    service = start_service(settings)
    _openai_generates(service)
    _webuiapi_generates(service)


def test_errors_in_each_clients_shape(settings, start_service):
    service = start_service(settings, workers=0)  # every call here fails before any job runs
    _openai_errors(service)
    _a1111_errors(service)


def _openai_generates(service) -> None:
    client = _openai(service)
    [model] = client.models.list().data
    assert model.id == "tiny" and client.models.retrieve("tiny").id == "tiny"

    result = client.images.generate(
        model="dall-e-3", prompt="a red square", n=2, size="64x64", quality="low", user="u-1"
    )
    images = [Image.open(io.BytesIO(base64.b64decode(item.b64_json))) for item in result.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert images[0].tobytes() != images[1].tobytes() and result.size == "64x64"

    # It was an ordinary job of this key: listed by /v1 with what the OpenAI call asked for.
    [job] = httpx.get(
        f"{service.base_url}/v1/jobs", headers={"Authorization": f"Bearer {OPENAI_KEY}"}
    ).json()["data"]
    assert job["status"] == "succeeded" and job["request"]["steps"] == 15
    assert (
        job["request"]["metadata"] == {"openai_user": "u-1"} and job["request"]["webhook"] is None
    )


def _webuiapi_generates(service) -> None:
    api = _webui(service)
    assert [model["title"] for model in api.get_sd_models()] == ["tiny"]
    assert {"DPM++ 2M Karras", "Euler a", "Euler", "DDIM", "UniPC"} <= set(
        api.util_get_sampler_names()
    )
    assert "tiny-style-a" in [lora["name"] for lora in api.get_loras()]
    assert api.util_get_current_model() == "tiny"
    assert api.get_progress()["state"]["job_count"] == 0

    result = api.txt2img(
        prompt="a red square <lora:tiny-style-a:0.8>",
        negative_prompt="blurry",
        width=64,
        height=64,
        steps=3,
        cfg_scale=5,
        sampler_name="Euler a",
        seed=-1,
        batch_size=2,
        n_iter=2,
    )
    assert len(result.images) == 4 and {image.size for image in result.images} == {(64, 64)}
    seeds = result.info["all_seeds"]
    first = result.info["seed"]
    assert first >= 0 and seeds == [first, first + 1, first + 2, first + 3]
    assert result.info["infotexts"][1].endswith(
        f"Steps: 3, Sampler: Euler a, CFG scale: 5, Seed: {first + 1}, Size: 64x64, Model: tiny"
    )
    assert result.parameters["n_iter"] == 2 and result.parameters["prompt"].endswith(":0.8>")

    # Two ordinary jobs of this key (n_iter), each of batch_size images, the LoRA applied.
    listed = httpx.get(
        f"{service.base_url}/v1/jobs", headers={"Authorization": f"Bearer {A1111_KEY}"}
    )
    jobs = sorted(listed.json()["data"], key=lambda job: job["request"]["seed"])
    assert [job["request"]["seed"] for job in jobs] == [first, first + 2]
    assert all(job["status"] == "succeeded" and len(job["images"]) == 2 for job in jobs)
    request = jobs[0]["request"]
    assert request["prompt"] == "a red square" and request["sampler"] == "euler_a"
    assert request["loras"] == [{"name": "tiny-style-a", "scale": 0.8}]
    assert (request["guidance_scale"], request["negative_prompt"]) == (5.0, "blurry")


def _openai_errors(service) -> None:
    client = _openai(service)
    with pytest.raises(openai.UnprocessableEntityError) as bad_size:
        client.images.generate(prompt="a red square", size="65x64")
    assert bad_size.value.param == "size" and "multiple of 8" in bad_size.value.message
    with pytest.raises(openai.UnprocessableEntityError) as too_many:
        client.images.generate(prompt="a red square", n=3)
    assert too_many.value.param == "n" and "at most 2" in too_many.value.message
    with pytest.raises(openai.UnprocessableEntityError) as blank:
        client.images.generate(prompt="  ")
    assert blank.value.param == "prompt" and blank.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError) as unknown:
        client.images.generate(prompt="a red square", model="stable-diffusion-9")
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"

    stranger = openai.OpenAI(
        base_url=f"{service.base_url}/openai/v1", api_key="sk-wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.images.generate(prompt="a red square")
    assert denied.value.code == "invalid_api_key"
    assert denied.value.body["message"] == "Authorization: the API key is not valid"


def _a1111_errors(service) -> None:
    api = _webui(service)
    with pytest.raises(RuntimeError) as unknown_lora:
        api.txt2img(prompt="a cat <lora:no-such-style:1>", width=64, height=64, steps=2)
    status, text = unknown_lora.value.args
    body = json.loads(text)
    assert status == 422 and body["error"] == "invalid_request"
    assert body["detail"].startswith("prompt: loras[0].name: unknown LoRA 'no-such-style'")
    with pytest.raises(RuntimeError) as bad_sampler:
        api.txt2img(prompt="a cat", sampler_name="Heun", width=64, height=64)
    assert (
        bad_sampler.value.args[0] == 422
        and "sampler_name: unknown sampler 'Heun'" in bad_sampler.value.args[1]
    )
    base = f"{service.base_url}/sdapi/v1"
    basic = base64.b64encode(b"someone:wrong").decode()
    denied = httpx.get(f"{base}/sd-models", headers={"Authorization": f"Basic {basic}"})
    assert (
        denied.status_code == 401
        and denied.json()["detail"] == "Authorization: the API key is not valid"
    )
    bearer = httpx.get(f"{base}/sd-models", headers={"Authorization": f"Bearer {A1111_KEY}"})
    assert bearer.status_code == 200
    refused = httpx.post(f"{base}/options", json={"sd_model_checkpoint": "sdxl-base"},
                         headers={"Authorization": f"Bearer {A1111_KEY}"})  # fmt: skip
    assert refused.status_code == 422 and "'sdxl-base' is not served" in refused.json()["detail"]
