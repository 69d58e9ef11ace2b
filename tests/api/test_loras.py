"""LoRA adapter files: list, upload (multipart or raw body), header check, size limit, names that
could escape the directory, delete."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from api_helpers import check_error
from safetensors.numpy import save


def lora_bytes(rank: int = 4) -> bytes:
    return save({
        "unet.mid_block.attentions.0.to_q.lora_A.weight": np.ones((rank, 32), dtype=np.float32),
        "unet.mid_block.attentions.0.to_q.lora_B.weight": np.zeros((32, rank), dtype=np.float32),
    })  # fmt: skip


def test_upload_list_use_delete(api_client, settings):
    assert api_client.get("/v1/loras").json() == {"data": []}
    data = lora_bytes()
    response = api_client.post(
        "/v1/loras", files={"file": ("ink.safetensors", data, "application/octet-stream")}
    )
    assert response.status_code == 201, response.text
    sha256 = hashlib.sha256(data).hexdigest()
    assert response.json() == {
        "name": "ink",
        "size_bytes": len(data),
        "sha256": sha256,
        "scope": "shared",
    }
    assert response.headers["location"] == "/v1/loras/ink"
    assert (settings.lora_dir / "ink.safetensors").read_bytes() == data
    assert api_client.get("/v1/loras").json() == {
        "data": [{"name": "ink", "size_bytes": len(data), "sha256": sha256, "scope": "shared"}]
    }
    assert api_client.get("/v1/loras/ink").json()["name"] == "ink"
    # The new adapter is usable in a request at once.
    assert (
        api_client.post(
            "/v1/jobs", json={"prompt": "a seven", "loras": [{"name": "ink", "scale": 0.5}]}
        ).status_code
        == 202
    )

    assert api_client.delete("/v1/loras/ink").status_code == 204
    assert not (settings.lora_dir / "ink.safetensors").exists()
    check_error(api_client.get("/v1/loras/ink"), 404, "not_found", "LoRA 'ink' not found")
    check_error(api_client.delete("/v1/loras/ink"), 404, "not_found")
    check_error(
        api_client.post("/v1/jobs", json={"prompt": "a seven", "loras": [{"name": "ink"}]}),
        422,
        message="loras[0].name: unknown LoRA 'ink'",
    )


def test_raw_body_upload_with_name_in_path(api_client):
    response = api_client.post(
        "/v1/loras/chalk",
        content=lora_bytes(),
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 201 and response.json()["name"] == "chalk"
    assert [item["name"] for item in api_client.get("/v1/loras").json()["data"]] == ["chalk"]


def test_form_name_overrides_file_name(api_client):
    response = api_client.post(
        "/v1/loras", data={"name": "pencil"}, files={"file": ("whatever.safetensors", lora_bytes())}
    )
    assert response.status_code == 201 and response.json()["name"] == "pencil"


def test_existing_name_is_409(api_client):
    api_client.post("/v1/loras/ink", content=lora_bytes())
    check_error(
        api_client.post("/v1/loras/ink", content=lora_bytes(8)),
        409,
        "conflict",
        "LoRA 'ink' already exists; delete it first",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "file: not a safetensors file (0 bytes"),
        (b"\x00" * 4 + b"junk", "does not fit a 8-byte file"),
        ((10**9).to_bytes(8, "little") + b"{}", "header length 1000000000 does not fit"),
        (
            (7).to_bytes(8, "little") + b"not-js!",
            "file: not a safetensors file (header is not JSON)",
        ),
        ((2).to_bytes(8, "little") + b"{}", "file: the safetensors file holds no tensors"),
        (save({"conv.weight": np.zeros((2, 2), dtype=np.float32)}), "file: holds no LoRA weights"),
        (lora_bytes()[:-8], "data_offsets"),
    ],
)
def test_files_that_are_not_lora_safetensors_are_422(api_client, settings, data, message):
    response = api_client.post("/v1/loras/bad", content=data)
    check_error(response, 422, "invalid_lora", message)
    assert (
        not settings.lora_dir.exists() or [path.name for path in settings.lora_dir.iterdir()] == []
    )


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        (
            {"data": {"name": "../evil"}, "files": {"file": ("x.safetensors", b"")}},
            "name: must be 1-128 letters",
        ),
        (
            {"files": {"file": ("../../evil.safetensors", b"")}},
            "file: filename must not contain a path",
        ),
        (
            {"files": {"file": ("..\\evil.safetensors", b"")}},
            "file: filename must not contain a path",
        ),
        ({"files": {"file": (".hidden.safetensors", b"")}}, "file: must be 1-128 letters"),
        ({"files": {"file": ("ink.bin", b"")}}, "file: must be a .safetensors file"),
        (
            {"data": {"name": "ink.safetensors"}, "files": {"file": ("x.safetensors", b"")}},
            "name: give the adapter name without the .safetensors extension",
        ),
    ],
)
def test_names_that_could_escape_the_directory_are_422(
    api_client, settings, tmp_path, request_kwargs, message
):
    check_error(api_client.post("/v1/loras", **request_kwargs), 422, "invalid_request", message)
    assert (
        not (tmp_path / "evil.safetensors").exists()
        and not (settings.lora_dir.parent.parent / "evil.safetensors").exists()
    )


def test_path_names_are_checked_too(api_client):
    check_error(
        api_client.post("/v1/loras/.hidden", content=lora_bytes()),
        422,
        message="name: must be 1-128 letters",
    )
    check_error(api_client.delete("/v1/loras/.hidden"), 422, message="name: must be 1-128 letters")
    check_error(api_client.post("/v1/loras/a%2F..%2Fb", content=lora_bytes()), 404)


def test_upload_over_the_size_limit_is_413(make_settings, make_api_client):
    settings = make_settings(max_lora_bytes=1024)
    client = make_api_client(settings)
    big = save({"x.lora_A.weight": np.zeros((512,), dtype=np.float32)})
    check_error(
        client.post("/v1/loras/big", content=big),
        413,
        "payload_too_large",
        "larger than GENSVC_MAX_LORA_BYTES (1024 bytes)",
    )
    check_error(
        client.post("/v1/loras", files={"file": ("big.safetensors", big)}), 413, "payload_too_large"
    )

    def chunks():
        yield big[:1000]
        yield big[1000:]

    check_error(client.post("/v1/loras/big", content=chunks()), 413, "payload_too_large")
    assert not settings.lora_dir.exists() or list(settings.lora_dir.iterdir()) == []
