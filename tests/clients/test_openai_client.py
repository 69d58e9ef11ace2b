"""The official `openai` package against a live gateway and a real worker on the tiny model."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

KEY = "sk-test-openai"


@pytest.fixture
def settings(make_settings):
    return make_settings(api_keys=[KEY, "sk-other"], max_batch_images=2)


def test_images_generate_runs_a_job_and_answers_like_openai(settings, start_service):
    live = start_service(settings)
    client = openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=KEY, max_retries=0)
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
        f"{live.base_url}/v1/jobs", headers={"Authorization": f"Bearer {KEY}"}
    ).json()["data"]
    assert job["status"] == "succeeded" and job["request"]["steps"] == 15
    assert (
        job["request"]["metadata"] == {"openai_user": "u-1"} and job["request"]["webhook"] is None
    )

    by_url = client.images.generate(prompt="a blue circle", response_format="url", quality="low")
    download = httpx.get(by_url.data[0].url, headers={"Authorization": f"Bearer {KEY}"})
    assert download.status_code == 200 and Image.open(io.BytesIO(download.content)).size == (64, 64)


def test_errors_have_openai_shape_and_v1_status_codes(settings, start_service):
    live = start_service(settings, workers=0)  # every call here fails before any job runs
    client = openai.OpenAI(base_url=f"{live.base_url}/openai/v1", api_key=KEY, max_retries=0)
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
        base_url=f"{live.base_url}/openai/v1", api_key="sk-wrong", max_retries=0
    )
    with pytest.raises(openai.AuthenticationError) as denied:
        stranger.images.generate(prompt="a red square")
    assert denied.value.code == "invalid_api_key"
    assert denied.value.body["message"] == "Authorization: the API key is not valid"
