"""Every request rule (generative_service/rules.py) rejects bad input with the right status and a
message that names the field. No worker: the gateway validates before anything is queued."""

from __future__ import annotations

import base64
import io
import json

import pytest
from api_helpers import check_error
from PIL import Image

OK = {"prompt": "a red circle above a blue square"}


def png_b64(width: int = 64, height: int = 64) -> str:
    buffer = io.BytesIO()
    Image.new("L", (width, height), 128).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def control(**fields) -> dict:
    return {**OK, "control": {"type": "canny", "image": png_b64(), **fields}}


BAD_BODIES = [
    ({}, "prompt: is required"),
    ({"prompt": ""}, "prompt: must have at least 1 character"),
    ({"prompt": "   "}, "prompt: must not be blank"),
    ({"prompt": "x" * 4001}, "prompt: must have at most 4000 characters"),
    ({"prompt": 5}, "prompt: must be a valid string"),
    ({**OK, "negative_prompt": "x" * 4001}, "negative_prompt: must have at most 4000 characters"),
    ({**OK, "width": 65}, "width: must be a multiple of 8, got 65"),
    ({**OK, "width": 56}, "width: must be at least 64"),
    ({**OK, "width": 4096}, "width: must be at most 2048 (GENSVC_MAX_SIDE), got 4096"),
    ({**OK, "width": "wide"}, "width: must be a valid integer"),
    ({**OK, "height": 100}, "height: must be a multiple of 8, got 100"),
    ({**OK, "height": 2056}, "height: must be at most 2048"),
    ({**OK, "steps": 0}, "steps: must be greater than or equal to 1, got 0"),
    ({**OK, "steps": 151}, "steps: must be less than or equal to 150, got 151"),
    ({**OK, "steps": 2.5}, "steps: must be a valid integer"),
    ({**OK, "guidance_scale": -0.5}, "guidance_scale: must be greater than or equal to 0"),
    ({**OK, "guidance_scale": 30.5}, "guidance_scale: must be less than or equal to 30"),
    ({**OK, "sampler": "plms"}, "sampler: unknown sampler 'plms'; known: dpmpp_2m_karras, euler_a"),
    ({**OK, "seed": -1}, "seed: must be greater than or equal to 0, got -1"),
    ({**OK, "seed": 2**63}, "seed: must be less than 9223372036854775808"),
    ({**OK, "num_images": 0}, "num_images: must be greater than or equal to 1"),
    ({**OK, "num_images": 5}, "num_images: must be less than or equal to 4"),
    ({**OK, "loras": [{"name": "../etc/passwd"}]}, "loras[0].name: must match pattern"),
    (
        {**OK, "loras": [{"name": "a", "scale": 5}]},
        "loras[0].scale: must be less than or equal to 4",
    ),
    ({**OK, "loras": [{"name": "a"}, {"name": "a"}]}, "loras: each LoRA may appear once"),
    ({**OK, "loras": "a"}, "loras: must be a valid list"),
    ({**OK, "loras": [{"name": f"l{i}"} for i in range(9)]}, "loras: must have at most 8 items"),
    ({**OK, "loras": [{"scale": 1}]}, "loras[0].name: is required"),
    (
        {**OK, "control": {"type": "pose", "image": png_b64()}},
        "control.type: must be 'canny' or 'depth'",
    ),
    ({**OK, "control": {"type": "canny"}}, "control.image: is required"),
    (control(image=""), "control.image: must have at least 1 character"),
    (control(image="***"), "control.image: not valid base64"),
    (
        control(image=base64.b64encode(b"hello world!").decode()),
        "control.image: not a decodable image",
    ),
    (
        control(image="data:text/plain;base64,aGVsbG8="),
        "control.image: data URL must be data:image/",
    ),
    (
        control(conditioning_scale=2.5),
        "control.conditioning_scale: must be less than or equal to 2",
    ),
    (control(canny_low=300), "control.canny_low: must be less than or equal to 255"),
    (control(canny_low=200, canny_high=100), "control: canny_low must not exceed canny_high"),
    (control(strength=1), "control.strength: unknown field"),
    ({**OK, "upscale": 3}, "upscale: must be 2 or 4, got 3"),
    ({**OK, "output_format": "gif"}, "output_format: must be 'png', 'jpeg' or 'webp', got 'gif'"),
    (
        {**OK, "preview": {"every_n_steps": 0}},
        "preview.every_n_steps: must be greater than or equal to 1",
    ),
    ({**OK, "preview": {"max_px": 2000}}, "preview.max_px: must be less than or equal to 1024"),
    ({**OK, "webhook": "ftp://example.com/hook"}, "webhook: "),
    (
        {**OK, "webhook": "https://example.com/" + "x" * 2048},
        "webhook: must have at most 2048 characters",
    ),
    (
        {**OK, "webhook_events_filter": ["done"]},
        "webhook_events_filter[0]: must be 'started', 'progress' or 'completed'",
    ),
    ({**OK, "metadata": "x"}, "metadata: must be a JSON object"),
    (
        {**OK, "metadata": {"blob": "x" * 5000}},
        "metadata: must be at most 4096 bytes as JSON, got 5",
    ),
    ({**OK, "colour": "red"}, "colour: unknown field"),
    ([OK], "body: must be a JSON object"),
]


@pytest.mark.parametrize(
    ("body", "message"),
    BAD_BODIES,
    ids=[m.split(":")[0] + "-" + str(i) for i, (_, m) in enumerate(BAD_BODIES)],
)
def test_bad_request_body_is_422_naming_the_field(api_client, body, message):
    response = api_client.post("/v1/jobs", json=body)
    error = check_error(response, 422, "invalid_request", message)
    assert error["message"].startswith(message.split(":")[0] + ":")


def test_nothing_is_queued_for_a_rejected_request(api_client):
    api_client.post("/v1/jobs", json={**OK, "width": 65})
    assert api_client.get("/v1/jobs").json()["data"] == []


def test_every_bad_field_is_listed_in_details(api_client):
    error = check_error(
        api_client.post("/v1/jobs", json={"prompt": "", "steps": 0, "width": 7}), 422
    )
    assert {item["field"] for item in error["details"]} == {"prompt", "steps", "width"}


def test_malformed_json_is_400(api_client):
    response = api_client.post(
        "/v1/jobs", content=b'{"prompt": ', headers={"Content-Type": "application/json"}
    )
    check_error(response, 400, "bad_request", "body: invalid JSON")


def test_missing_body_is_422(api_client):
    check_error(api_client.post("/v1/jobs"), 422, "invalid_request", "body: is required")


def test_num_images_above_batch_limit(make_settings, make_api_client):
    client = make_api_client(make_settings(max_batch_images=2))
    check_error(
        client.post("/v1/jobs", json={**OK, "num_images": 3}),
        422,
        message="num_images: must be at most 2 (GENSVC_MAX_BATCH_IMAGES), got 3",
    )


def test_unknown_lora_lists_known_ones(settings, api_client, tmp_path):
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    (settings.lora_dir / "ink.safetensors").write_bytes(b"x")
    error = check_error(
        api_client.post("/v1/jobs", json={**OK, "loras": [{"name": "ink"}, {"name": "chalk"}]}), 422
    )
    assert error["message"] == "loras[1].name: unknown LoRA 'chalk'; known: ink"
    assert error["details"] == {"known": ["ink"]}


def test_control_image_with_too_many_pixels(make_settings, make_api_client):
    client = make_api_client(make_settings(max_control_pixels=64 * 64))
    response = client.post(
        "/v1/jobs", json={**OK, "control": {"type": "canny", "image": png_b64(72, 64)}}
    )
    check_error(response, 422, message="control.image: 72x64 has more than 4096 pixels")


def test_control_type_the_workers_do_not_serve(settings, api_client, redis):
    redis.set(
        f"{settings.key_prefix}:models",
        json.dumps({"base_model": "tiny", "controlnets": ["canny"]}),
    )
    response = api_client.post(
        "/v1/jobs", json={**OK, "control": {"type": "depth", "image": png_b64()}}
    )
    check_error(
        response,
        422,
        message="control.type: 'depth' is not available on this server; available: canny",
    )


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "BMP"])
def test_control_image_in_another_format_is_refused(api_client, fmt):
    buffer = io.BytesIO()
    Image.new("L", (64, 64), 128).save(buffer, format=fmt)
    image = base64.b64encode(buffer.getvalue()).decode()
    response = api_client.post("/v1/jobs", json=control(image=image))
    check_error(
        response,
        422,
        message=f"control.image: {fmt} images are not accepted (PNG, JPEG or WebP expected)",
    )


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_control_image_as_jpeg_or_webp_is_accepted(api_client, fmt):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format=fmt)
    image = base64.b64encode(buffer.getvalue()).decode()
    assert api_client.post("/v1/jobs", json=control(image=image)).status_code == 202


def test_control_accepts_data_url(api_client):
    response = api_client.post("/v1/jobs", json=control(image="data:image/png;base64," + png_b64()))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ({"Idempotency-Key": "k" * 256}, "Idempotency-Key: must have at most 255 characters"),
        ({"Prefer": "wait=soon"}, "Prefer: wait must be a whole number of seconds, got 'soon'"),
        ({"Prefer": "wait=-1"}, "Prefer: wait must be a whole number of seconds"),
    ],
)
def test_bad_headers(api_client, headers, message):
    check_error(
        api_client.post("/v1/jobs", json=OK, headers=headers), 422, "invalid_request", message
    )


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("limit=0", "limit: must be greater than or equal to 1, got 0"),
        ("limit=101", "limit: must be less than or equal to 100"),
        ("limit=many", "limit: must be a valid integer"),
        ("status=done", "status: must be 'queued', 'running', 'succeeded', 'failed' or 'canceled'"),
        ("cursor=yesterday", "cursor: not a cursor this API returned"),
    ],
)
def test_bad_list_query(api_client, query, message):
    check_error(api_client.get(f"/v1/jobs?{query}"), 422, "invalid_request", message)


def test_bad_image_index(api_client):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    check_error(
        api_client.get(f"/v1/jobs/{job_id}/images/first"),
        422,
        message="index: must be a valid integer",
    )
    check_error(
        api_client.get(f"/v1/jobs/{job_id}/images/-1"),
        422,
        message="index: must be greater than or equal to 0",
    )


def test_bad_last_event_id(api_client):
    job_id = api_client.post("/v1/jobs", json=OK).json()["id"]
    check_error(
        api_client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": "latest"}),
        422,
        message="Last-Event-ID: must be an event id",
    )
    check_error(
        api_client.get(f"/v1/jobs/{job_id}/events?last_event_id=7"),
        422,
        message="last_event_id: must be an event id",
    )


def test_body_over_the_limit_by_content_length_is_413(make_settings, make_api_client):
    client = make_api_client(make_settings(max_request_bytes=1024))
    response = client.post("/v1/jobs", json={**OK, "negative_prompt": "x" * 2000})
    check_error(response, 413, "payload_too_large", "body: Content-Length")


def test_streamed_body_over_the_limit_is_413(make_settings, make_api_client):
    client = make_api_client(make_settings(max_request_bytes=1024))
    payload = json.dumps({**OK, "negative_prompt": "x" * 2000}).encode()

    def chunks():
        for start in range(0, len(payload), 256):
            yield payload[start : start + 256]

    response = client.post(
        "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert "content-length" not in {key.lower() for key in response.request.headers}
    check_error(
        response,
        413,
        "payload_too_large",
        "body: request body is larger than the limit of 1024 bytes",
    )


def test_nan_in_metadata_is_422(api_client):
    body = b'{"prompt": "a seven", "metadata": {"score": NaN}}'
    response = api_client.post(
        "/v1/jobs", content=body, headers={"Content-Type": "application/json"}
    )
    check_error(
        response,
        422,
        "invalid_request",
        "metadata: must be plain JSON: NaN and Infinity are not JSON numbers",
    )


def test_body_that_is_not_utf8_is_400(api_client):
    response = api_client.post(
        "/v1/jobs", content=b'{"prompt": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )
    check_error(response, 400, message="body: ")
