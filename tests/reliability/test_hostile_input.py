"""Hostile input against the gateway in-process (no worker, no torch): every attack gets the
documented 4xx with a message in the common error shape, nothing is queued or written for it,
and the gateway keeps serving normal requests afterwards.

The per-field rules are covered in tests/api/test_validation.py; this file is what an attacker
sends: bodies that are too big, not UTF-8 or not quite JSON, non-finite floats, numbers far out
of range, decompression bombs, files that are not LoRA adapters, names and indexes that try to
leave their directory, and ids that are not yours.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save

from generative_service.jobs import JobStore, owner_for_key
from generative_service.schemas import ImageInfo, Timings
from generative_service.storage import LocalStorage, encode_image, image_url

from .helpers import b64, check_error, png_declaring

KEY_A = {"Authorization": "Bearer key-a"}
KEY_B = {"Authorization": "Bearer key-b"}
OK = {"prompt": "a red circle above a blue square", "steps": 2}
MAX_BODY = 256 * 1024
MAX_LORA = 64 * 1024
JSON = {"Content-Type": "application/json"}
UNKNOWN_JOB = "job_" + "0" * 24
# The 12000x12000 bomb is refused by our pixel limit after PIL's own warning; the warning is expected.
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@pytest.fixture
def hostile_settings(make_settings):
    return make_settings(
        api_keys=["key-a", "key-b"],
        max_request_bytes=MAX_BODY,
        max_lora_bytes=MAX_LORA,
        wait_max_s=1,
    )


@pytest.fixture
def client(make_api_client, hostile_settings):
    return make_api_client(hostile_settings, headers=KEY_A)


def _png(width: int = 64, height: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def _control(image: str) -> dict:
    return {**OK, "control": {"type": "canny", "image": image}}


def _raw(text: str | bytes) -> dict:
    return {"content": text.encode() if isinstance(text, str) else text, "headers": JSON}


def _chunks(data: bytes, size: int = 16 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


class Streamed(bytes):
    """A body sent chunked, with no Content-Length (a fresh generator per request)."""


LORA_OK = save(
    {
        "unet.x.lora_A.weight": np.ones((4, 8), dtype=np.float32),
        "unet.x.lora_B.weight": np.zeros((8, 4), dtype=np.float32),
    }
)

# (id, method, path, request kwargs, status, code, message fragment)
# fmt: off
ATTACKS = [
    # --- bodies --------------------------------------------------------------------------------
    ("body-content-length-over-limit", "POST", "/v1/jobs", _raw(json.dumps({**OK, "negative_prompt": "x" * MAX_BODY})), 413, "payload_too_large", "body: Content-Length"),
    ("body-chunked-over-limit", "POST", "/v1/jobs", {"content": Streamed(json.dumps({**OK, "metadata": {"x": "y" * MAX_BODY}}).encode()), "headers": JSON}, 413, "payload_too_large", "larger than the limit"),
    ("prompt-200k-chars", "POST", "/v1/jobs", {"json": {**OK, "prompt": "x" * 200_000}}, 422, "invalid_request", "prompt: must have at most 4000 characters"),
    ("negative-prompt-200k-emoji", "POST", "/v1/jobs", {"json": {**OK, "negative_prompt": "\U0001f600" * 50_000}}, 422, "invalid_request", "negative_prompt: must have at most 4000"),
    ("body-not-utf8", "POST", "/v1/jobs", _raw(b'{"prompt": "\xff\xfe caf\xe9"}'), 400, "bad_request", "body: cannot be parsed as JSON"),
    ("body-latin1", "POST", "/v1/jobs", _raw('{"prompt": "café"}'.encode("latin-1")), 400, "bad_request", "body: cannot be parsed as JSON"),
    ("body-lone-surrogate", "POST", "/v1/jobs", _raw(r'{"prompt": "\ud800"}'), 422, "invalid_request", "prompt: "),
    ("body-truncated-json", "POST", "/v1/jobs", _raw('{"prompt": "a", "steps": '), 400, "bad_request", "body: invalid JSON"),
    ("body-nested-10k", "POST", "/v1/jobs", _raw('{"prompt": "a", "metadata": ' + '{"a": ' * 10_000 + "1" + "}" * 10_001), 400, "bad_request", "body: cannot be parsed"),
    ("body-integer-5000-digits", "POST", "/v1/jobs", _raw('{"prompt": "a", "seed": ' + "9" * 5000 + "}"), 400, "bad_request", "body: cannot be parsed"),
    ("body-text-plain", "POST", "/v1/jobs", {"content": json.dumps(OK), "headers": {"Content-Type": "text/plain"}}, 422, "invalid_request", "body: must be a JSON object"),
    ("body-json-array", "POST", "/v1/jobs", {"json": [OK] * 3}, 422, "invalid_request", "body: must be a JSON object"),
    # --- NaN / Infinity --------------------------------------------------------------------------
    ("guidance-NaN", "POST", "/v1/jobs", _raw('{"prompt": "a", "guidance_scale": NaN}'), 422, "invalid_request", "guidance_scale: must be a finite number"),
    ("guidance-Infinity", "POST", "/v1/jobs", _raw('{"prompt": "a", "guidance_scale": Infinity}'), 422, "invalid_request", "guidance_scale: must be a finite number"),
    ("steps-NaN", "POST", "/v1/jobs", _raw('{"prompt": "a", "steps": NaN}'), 422, "invalid_request", "steps: "),
    ("width-1e400", "POST", "/v1/jobs", _raw('{"prompt": "a", "width": 1e400}'), 422, "invalid_request", "width: "),
    ("lora-scale-minus-Infinity", "POST", "/v1/jobs", _raw('{"prompt": "a", "loras": [{"name": "x", "scale": -Infinity}]}'), 422, "invalid_request", "loras[0].scale: must be a finite number"),
    ("control-scale-NaN", "POST", "/v1/jobs", _raw('{"prompt": "a", "control": {"type": "canny", "image": "AA==", "conditioning_scale": NaN}}'), 422, "invalid_request", "control.conditioning_scale"),
    ("metadata-NaN", "POST", "/v1/jobs", _raw('{"prompt": "a", "metadata": {"score": NaN}}'), 422, "invalid_request", "metadata: must be plain JSON"),
    # --- sizes, steps, seeds out of range ----------------------------------------------------------
    ("width-negative", "POST", "/v1/jobs", {"json": {**OK, "width": -64}}, 422, "invalid_request", "width: must be at least 64"),
    ("height-zero", "POST", "/v1/jobs", {"json": {**OK, "height": 0}}, 422, "invalid_request", "height: must be at least 64"),
    ("width-10e30", "POST", "/v1/jobs", {"json": {**OK, "width": 10**30}}, 422, "invalid_request", "width: must be at most 2048"),
    ("steps-negative", "POST", "/v1/jobs", {"json": {**OK, "steps": -5}}, 422, "invalid_request", "steps: must be greater than or equal to 1"),
    ("steps-10e12", "POST", "/v1/jobs", {"json": {**OK, "steps": 10**12}}, 422, "invalid_request", "steps: must be less than or equal to 150"),
    ("seed-negative", "POST", "/v1/jobs", {"json": {**OK, "seed": -1}}, 422, "invalid_request", "seed: must be greater than or equal to 0"),
    ("seed-2e64", "POST", "/v1/jobs", {"json": {**OK, "seed": 2**64}}, 422, "invalid_request", "seed: must be less than 9223372036854775808"),
    ("seed-10e300", "POST", "/v1/jobs", {"json": {**OK, "seed": 10**300}}, 422, "invalid_request", "seed: "),
    ("num-images-10e9", "POST", "/v1/jobs", {"json": {**OK, "num_images": 10**9}}, 422, "invalid_request", "num_images: "),
    ("preview-max-px-huge", "POST", "/v1/jobs", {"json": {**OK, "preview": {"max_px": 10**9}}}, 422, "invalid_request", "preview.max_px: "),
    # --- control images ----------------------------------------------------------------------------
    ("control-bomb-100000x100000", "POST", "/v1/jobs", {"json": _control(b64(png_declaring(100_000, 100_000)))}, 422, "invalid_request", "control.image: image is too large to decode"),
    ("control-bomb-12000x12000", "POST", "/v1/jobs", {"json": _control(b64(png_declaring(12_000, 12_000)))}, 422, "invalid_request", "control.image: 12000x12000 has more than"),
    ("control-bomb-data-url", "POST", "/v1/jobs", {"json": _control("data:image/png;base64," + b64(png_declaring(65_000, 65_000)))}, 422, "invalid_request", "control.image: image is too large"),
    ("control-not-an-image", "POST", "/v1/jobs", {"json": _control(b64(b"%PDF-1.7 definitely not a picture"))}, 422, "invalid_request", "control.image: not a decodable image"),
    ("control-svg", "POST", "/v1/jobs", {"json": _control(b64(b"<svg xmlns='http://www.w3.org/2000/svg' width='9e9' height='9e9'/>"))}, 422, "invalid_request", "control.image: not a decodable image"),
    ("control-truncated-png", "POST", "/v1/jobs", {"json": _control(b64(_png()[:70]))}, 422, "invalid_request", "control.image: the image file is truncated or corrupt"),
    ("control-not-base64", "POST", "/v1/jobs", {"json": _control("../../etc/passwd")}, 422, "invalid_request", "control.image: not valid base64"),
    # --- LoRA uploads ------------------------------------------------------------------------------
    ("lora-zip-not-safetensors", "POST", "/v1/loras/zipped", {"content": b"PK\x03\x04" + b"\x00" * 200}, 422, "invalid_lora", "file: not a safetensors file"),
    ("lora-pickle-named-safetensors", "POST", "/v1/loras", {"files": {"file": ("evil.safetensors", b"\x80\x04\x95" + b"c" * 200)}}, 422, "invalid_lora", "file: not a safetensors file"),
    ("lora-header-length-2e63", "POST", "/v1/loras/hdr", {"content": (2**63).to_bytes(8, "little") + b"{}"}, 422, "invalid_lora", "does not fit"),
    ("lora-full-checkpoint", "POST", "/v1/loras/ckpt", {"content": save({"conv.weight": np.zeros((4, 4), dtype=np.float32)})}, 422, "invalid_lora", "holds no LoRA weights"),
    ("lora-enormous-by-length", "POST", "/v1/loras/big", {"content": b"x" * 16, "headers": {"Content-Length": str(10**12)}}, 413, "payload_too_large", "body: Content-Length 1000000000000"),
    ("lora-enormous-streamed", "POST", "/v1/loras/big", {"content": Streamed(LORA_OK + b"\x00" * (MAX_LORA + 1))}, 413, "payload_too_large", None),
    ("lora-enormous-form", "POST", "/v1/loras", {"files": {"file": ("big.safetensors", b"\x00" * (MAX_LORA + 70 * 1024))}}, 413, "payload_too_large", None),
    # --- path traversal: LoRA names ------------------------------------------------------------------
    ("lora-name-encoded-traversal", "GET", "/v1/loras/..%2F..%2Fetc%2Fpasswd", {}, 404, "not_found", "no route"),
    ("lora-name-dotfile", "DELETE", "/v1/loras/.bashrc", {}, 422, "invalid_request", "name: must be 1-128 letters"),
    ("lora-name-nul", "GET", "/v1/loras/ink%00.safetensors", {}, 422, "invalid_request", "name: "),
    ("lora-name-backslash", "DELETE", "/v1/loras/..%5C..%5Cwindows", {}, 422, "invalid_request", "name: "),
    ("lora-name-too-long", "GET", "/v1/loras/" + "a" * 300, {}, 422, "invalid_request", "name: "),
    ("lora-name-unicode", "POST", "/v1/loras/%C3%A9vil", {"content": LORA_OK}, 422, "invalid_request", "name: "),
    ("lora-upload-name-traversal", "POST", "/v1/loras", {"data": {"name": "../../x"}, "files": {"file": ("x.safetensors", LORA_OK)}}, 422, "invalid_request", "name: "),
    ("lora-upload-filename-traversal", "POST", "/v1/loras", {"files": {"file": ("../../../tmp/x.safetensors", LORA_OK)}}, 422, "invalid_request", "file: filename must not contain a path"),
    ("lora-upload-filename-backslash", "POST", "/v1/loras", {"files": {"file": ("..\\..\\x.safetensors", LORA_OK)}}, 422, "invalid_request", "file: filename must not contain a path"),
    ("lora-in-request-traversal", "POST", "/v1/jobs", {"json": {**OK, "loras": [{"name": "../../../etc/passwd"}]}}, 422, "invalid_request", "loras[0].name: "),
    # --- path traversal: image indexes and job ids -----------------------------------------------------
    ("image-index-traversal", "GET", f"/v1/jobs/{UNKNOWN_JOB}/images/..%2F..%2F..%2Fetc%2Fpasswd", {}, 404, "not_found", "no route"),
    ("image-index-dotdot", "GET", f"/v1/jobs/{UNKNOWN_JOB}/images/..", {}, 404, "not_found", None),
    ("image-index-negative", "GET", f"/v1/jobs/{UNKNOWN_JOB}/images/-1", {}, 422, "invalid_request", "index: must be greater than or equal to 0"),
    ("image-index-10e20", "GET", f"/v1/jobs/{UNKNOWN_JOB}/images/100000000000000000000", {}, 422, "invalid_request", "index: must be less than or equal to 64"),
    ("image-index-with-suffix", "GET", f"/v1/jobs/{UNKNOWN_JOB}/images/0.png", {}, 422, "invalid_request", "index: must be a valid integer"),
    ("job-id-traversal", "GET", "/v1/jobs/job_..%2F..%2Fimages", {}, 404, "not_found", None),
    ("job-id-dots", "GET", "/v1/jobs/job_..", {}, 404, "not_found", "job 'job_..' not found"),
    ("job-id-10k-chars", "GET", "/v1/jobs/job_" + "a" * 10_000, {}, 422, "invalid_request", "job_id: must have at most 64 characters"),
    ("job-id-unicode-digits", "GET", "/v1/jobs/job_%D9%A1%D9%A2", {}, 404, "not_found", None),
    # --- unknown job ids ------------------------------------------------------------------------------
    ("unknown-job-get", "GET", f"/v1/jobs/{UNKNOWN_JOB}", {}, 404, "not_found", f"job '{UNKNOWN_JOB}' not found"),
    ("unknown-job-cancel", "POST", f"/v1/jobs/{UNKNOWN_JOB}/cancel", {}, 404, "not_found", "not found"),
    ("unknown-job-events", "GET", f"/v1/jobs/{UNKNOWN_JOB}/events", {}, 404, "not_found", "not found"),
    ("unknown-job-image", "GET", f"/v1/jobs/{UNKNOWN_JOB}/images/0", {}, 404, "not_found", "not found"),
    ("unknown-job-webhooks", "GET", f"/v1/jobs/{UNKNOWN_JOB}/webhooks", {}, 404, "not_found", "not found"),
    # --- query and header values that reached Redis raw (500s before the fixes) ------------------------
    ("cursor-nan", "GET", "/v1/jobs?cursor=nan", {}, 422, "invalid_request", "cursor: not a cursor this API returned"),
    ("cursor-inf", "GET", "/v1/jobs?cursor=-inf", {}, 422, "invalid_request", "cursor: "),
    ("last-event-id-above-2e64", "GET", f"/v1/jobs/{UNKNOWN_JOB}/events", {"headers": {"Last-Event-ID": "99999999999999999999999-0"}}, 422, "invalid_request", "Last-Event-ID: must be an event id"),
    ("last-event-id-unicode-digits", "GET", f"/v1/jobs/{UNKNOWN_JOB}/events?last_event_id=%D9%A1%D9%A2-0", {}, 422, "invalid_request", "last_event_id: must be an event id"),
    ("idempotency-key-non-ascii", "POST", "/v1/jobs", {"json": OK, "headers": {"Idempotency-Key": "ключ".encode()}}, 422, "invalid_request", "Idempotency-Key: "),
    ("prefer-wait-unicode-digit", "POST", "/v1/jobs", {"json": OK, "headers": {"Prefer": "wait=١".encode()}}, 422, "invalid_request", "Prefer: wait must be a whole number"),
    ("no-api-key", "GET", "/v1/jobs", {"headers": {"Authorization": ""}}, 401, "unauthorized", "Authorization: "),
    ("api-key-non-ascii", "GET", "/v1/jobs", {"headers": {"Authorization": "Bearer ключ".encode()}}, 401, "unauthorized", "Authorization: "),
]
# fmt: on


def _send(client, method: str, path: str, kwargs: dict):
    if isinstance(kwargs.get("content"), Streamed):
        kwargs = {**kwargs, "content": _chunks(bytes(kwargs["content"]))}
    return client.request(method, path, **kwargs)


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code", "message"),
    [a[1:] for a in ATTACKS],
    ids=[a[0] for a in ATTACKS],
)
def test_attack_gets_the_documented_4xx(
    client, hostile_settings, method, path, kwargs, status, code, message
):
    response = _send(client, method, path, kwargs)
    check_error(response, status, code, message)
    if status in (413, 422) and path.startswith("/v1/loras"):
        # Nothing half-written is left in the adapter directory (temp files included).
        lora_dir = hostile_settings.lora_dir
        assert not lora_dir.exists() or sorted(p.name for p in lora_dir.iterdir()) == []


def test_prefer_wait_with_thousands_of_digits_is_capped_not_a_500(client):
    response = client.post("/v1/jobs", json=OK, headers={"Prefer": "wait=" + "9" * 5000})
    assert response.status_code == 202, response.text
    assert response.headers["preference-applied"] == "wait=1"  # capped at GENSVC_WAIT_MAX_S


def test_another_tenants_finished_job_and_its_image_do_not_leak(client, hostile_settings, redis):
    job_id = client.post("/v1/jobs", json=OK).json()["id"]
    _finish_with_image(redis, hostile_settings, job_id)
    assert client.get(f"/v1/jobs/{job_id}/images/0").status_code == 200
    for method, path in [
        ("GET", f"/v1/jobs/{job_id}"),
        ("GET", f"/v1/jobs/{job_id}/images/0"),
        ("GET", f"/v1/jobs/{job_id}/events"),
        ("GET", f"/v1/jobs/{job_id}/webhooks"),
        ("POST", f"/v1/jobs/{job_id}/cancel"),
    ]:
        response = client.request(method, path, headers=KEY_B)
        check_error(response, 404, "not_found", f"job {job_id!r} not found")
        assert b"\x89PNG" not in response.content
    assert client.get("/v1/jobs", headers=KEY_B).json()["data"] == []
    # The owner still sees it, unchanged by the other key's attempts.
    assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded"


def test_gateway_stays_healthy_after_the_whole_barrage(client, hostile_settings, redis):
    before = redis.info("clients")["connected_clients"]
    for _, method, path, kwargs, status, _, _ in ATTACKS:
        assert _send(client, method, path, kwargs).status_code == status, path
    assert client.get("/healthz").status_code == 200
    # Nothing was queued or stored for a rejected request ...
    assert client.get("/v1/jobs").json()["data"] == []
    store = JobStore(redis, hostile_settings)
    assert store.queue.waiting_count() == 0
    # ... and normal work goes on: a job is accepted, readable and listed; an adapter uploads.
    accepted = client.post("/v1/jobs", json=OK)
    assert accepted.status_code == 202, accepted.text
    assert client.get(accepted.headers["location"]).json()["status"] == "queued"
    assert [job["id"] for job in client.get("/v1/jobs").json()["data"]] == [accepted.json()["id"]]
    assert client.post("/v1/loras/ink", content=LORA_OK).status_code == 201
    # key-a is not an admin key: its upload is private, stored under its owner id.
    assert [p.name for p in hostile_settings.lora_dir.iterdir()] == [
        f"{owner_for_key('key-a')}.ink.safetensors"
    ]
    # No Redis connection leaked per rejected request (allow the gateway's own few).
    assert redis.info("clients")["connected_clients"] <= before + 5


def _finish_with_image(redis, settings, job_id: str) -> None:
    """Move a job to succeeded with one stored PNG, as a worker would."""
    from generative_service.schemas import BatchInfo

    store = JobStore(redis, settings)
    store.queue.rq_queue("default").remove(job_id)
    store.mark_started(job_id, batch=BatchInfo(id="batch_x", size=1), worker_id="test")
    data, content_type = encode_image(Image.new("RGB", (64, 64)), "png")
    LocalStorage(settings.storage_dir).put(job_id, 0, data, content_type)
    image = ImageInfo(
        index=0, url=image_url(job_id, 0), width=64, height=64, seed=1, content_type=content_type
    )
    store.mark_succeeded(job_id, images=[image], timings=Timings(inference_ms=1.0))


def _safetensors(tensors: dict, data: bytes, metadata: object = None) -> bytes:
    """A safetensors file with exactly this header (what a hostile client can hand-craft)."""
    header = dict(tensors)
    if metadata is not None:
        header["__metadata__"] = metadata
    raw = json.dumps(header).encode()
    return len(raw).to_bytes(8, "little") + raw + data


_A = "unet.x.lora_A.weight"
_B = "unet.x.lora_B.weight"


def _pair(a_offsets, b_offsets, *, a_shape=(2, 2), b_shape=(2, 2)) -> dict:
    return {
        _A: {"dtype": "F32", "shape": list(a_shape), "data_offsets": list(a_offsets)},
        _B: {"dtype": "F32", "shape": list(b_shape), "data_offsets": list(b_offsets)},
    }


# (id, file bytes, message fragment): each uploaded with 201 and then failed every job before.
# fmt: off
HOSTILE_LORAS = [
    ("overlapping-offsets", _safetensors(_pair((0, 16), (8, 24)), b"\x00" * 24), "data_offsets overlap another tensor's"),
    ("offsets-past-the-end", _safetensors(_pair((0, 16), (16, 32)), b"\x00" * 24), "do not match its shape and the file size"),
    ("gap-between-tensors", _safetensors(_pair((0, 16), (24, 40)), b"\x00" * 40), "a gap of 8 bytes before its data"),
    ("bytes-after-last-tensor", _safetensors(_pair((0, 16), (16, 32)), b"\x00" * 48), "16 bytes after the last tensor"),
    ("dimension-true", _safetensors(_pair((0, 8), (8, 24), a_shape=(True, 2)), b"\x00" * 24), "bad shape [true, 2]"),
    ("dimension-1e30", _safetensors(_pair((0, 16), (16, 32), a_shape=(1e30, 2)), b"\x00" * 32), "bad shape [1e+30, 2]"),
    ("dimension-2e63", _safetensors(_pair((0, 16), (16, 32), a_shape=(2**63, 2)), b"\x00" * 32), "bad shape"),
    ("metadata-not-strings", _safetensors(_pair((0, 16), (16, 32)), b"\x00" * 32, {"rank": 4}), "__metadata__ must be an object of string values"),
    ("metadata-a-list", _safetensors(_pair((0, 16), (16, 32)), b"\x00" * 32, ["x"]), "__metadata__ must be an object"),
    ("full-tensor-beside-lora", _safetensors({**_pair((0, 16), (16, 32)), "unet.conv_in.weight": {"dtype": "F32", "shape": [2, 2], "data_offsets": [32, 48]}}, b"\x00" * 48), "tensor 'unet.conv_in.weight' is not a LoRA weight"),
    ("header-nested-5000", (lambda raw: len(raw).to_bytes(8, "little") + raw)(("[" * 5000 + "]" * 5000).encode()), "nested too deep"),
]
# fmt: on


@pytest.mark.parametrize(
    ("data", "message"), [h[1:] for h in HOSTILE_LORAS], ids=[h[0] for h in HOSTILE_LORAS]
)
def test_lora_the_loader_would_refuse_is_refused_at_upload(client, hostile_settings, data, message):
    error = check_error(
        client.post("/v1/loras/hostile", content=data), 422, "invalid_lora", message
    )
    assert error["message"].startswith("file: ")
    lora_dir = hostile_settings.lora_dir
    assert not lora_dir.exists() or sorted(p.name for p in lora_dir.iterdir()) == []
