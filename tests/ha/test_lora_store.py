"""LoRA adapters in the bucket: uploads go there, a worker's cache is keyed by content hash and
fetched on first use, and a replaced or deleted adapter is never served from the cache."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator

import boto3
import httpx
import numpy as np
import pytest
from safetensors.numpy import save
from support import check_error

from generative_service.errors import NotFound
from generative_service.lora_store import ObjectLoraStore, get_lora_store


def lora_bytes(value: float = 1.0) -> bytes:
    return save({
        "unet.mid_block.attentions.0.to_q.lora_A.weight": np.full((4, 32), value, np.float32),
        "unet.mid_block.attentions.0.to_q.lora_B.weight": np.zeros((32, 4), np.float32),
    })  # fmt: skip


def head(settings, name: str) -> dict:
    bucket, _, prefix = settings.storage_url.removeprefix("s3://").partition("/")
    client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url)
    return client.head_object(Bucket=bucket, Key=f"{prefix}/loras/{name}.safetensors")


def test_uploads_go_to_the_bucket(make_s3_settings, make_api_client) -> None:
    settings = make_s3_settings()
    client = make_api_client(settings)
    data = lora_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    response = client.post(
        "/v1/loras", files={"file": ("ink.safetensors", data, "application/octet-stream")}
    )
    assert response.status_code == 201, response.text
    assert (
        response.json().items()
        >= {"name": "ink", "size_bytes": len(data), "sha256": sha256}.items()
    )
    assert head(settings, "ink")["Metadata"] == {"sha256": sha256}
    assert not settings.lora_dir.exists()  # nothing on the gateway's disk
    (listed,) = client.get("/v1/loras").json()["data"]
    # S3's listing has no metadata: the gateway asks for each adapter's (it once showed null)
    assert listed.items() >= {"name": "ink", "size_bytes": len(data), "sha256": sha256}.items()
    assert client.get("/v1/loras/ink").json()["sha256"] == sha256
    assert client.get("/v1/models").json()["loras"] == ["ink"]
    check_error(
        client.post("/v1/loras/ink", content=lora_bytes(2.0)), 409, message="already exists"
    )
    job = {"prompt": "a seven", "loras": [{"name": "ink"}]}
    assert client.post("/v1/jobs", json=job).status_code == 202
    assert client.delete("/v1/loras/ink").status_code == 204
    check_error(client.get("/v1/loras/ink"), 404)
    check_error(client.post("/v1/jobs", json=job), 422, message="unknown LoRA 'ink'")
    check_error(client.post("/v1/loras/bad", content=b"not safetensors"), 422)
    assert client.get("/v1/loras").json() == {"data": []}  # a refused upload leaves nothing


def test_worker_cache_follows_the_current_version(make_s3_settings, tmp_path) -> None:
    gateway = get_lora_store(make_s3_settings())
    worker_settings = gateway.settings.model_copy(
        update={"lora_cache_dir": tmp_path / "worker-cache"}
    )
    worker = ObjectLoraStore(worker_settings)
    source = tmp_path / "upload.safetensors"

    def upload(data: bytes) -> str:
        source.write_bytes(data)
        sha256 = hashlib.sha256(data).hexdigest()
        gateway.put("ink", source, sha256=sha256)
        return sha256

    first = upload(lora_bytes(1.0))
    path = worker.fetch("ink")
    assert path == tmp_path / "worker-cache" / f"{first}.safetensors"
    assert path.read_bytes() == lora_bytes(1.0)
    path.write_bytes(b"marker")  # a second fetch of the same version downloads nothing
    assert worker.fetch("ink") == path and path.read_bytes() == b"marker"

    gateway.delete("ink")
    with pytest.raises(NotFound):
        worker.fetch("ink")  # deleted: unknown at once, although its file is still cached
    second = upload(lora_bytes(3.0))
    replaced = worker.fetch("ink")
    assert replaced.name == f"{second}.safetensors" and replaced != path
    assert replaced.read_bytes() == lora_bytes(3.0)


def test_two_uploads_of_one_new_name_at_once_one_wins_the_other_is_409(
    make_s3_settings, start_service
) -> None:
    """Both uploads pass the "does it exist" check before their bodies arrive; only one may be
    written (S3 If-None-Match: *), the other is a 409, and the stored file is the winner's."""
    settings = make_s3_settings()
    gateway = start_service(settings, workers=0)
    bodies = {"first": lora_bytes(1.0), "second": lora_bytes(2.0)}
    release = threading.Event()
    started = threading.Barrier(3)
    answers: dict[str, httpx.Response] = {}

    def upload(which: str) -> None:
        data = bodies[which]

        def chunks() -> Iterator[bytes]:
            yield data[:8]  # the gateway's existence check runs before it reads the rest
            started.wait(timeout=30)
            release.wait(timeout=30)
            yield data[8:]

        answers[which] = httpx.post(
            f"{gateway.base_url}/v1/loras/ink",
            content=chunks(),
            headers={"content-type": "application/octet-stream"},
            timeout=60,
        )

    threads = [threading.Thread(target=upload, args=(which,)) for which in bodies]
    for thread in threads:
        thread.start()
    started.wait(timeout=30)
    time.sleep(1.0)  # both requests are in the route, past the check, waiting for their bodies
    release.set()
    for thread in threads:
        thread.join(timeout=60)

    statuses = sorted(response.status_code for response in answers.values())
    assert statuses == [201, 409], {k: v.text for k, v in answers.items()}
    (winner,) = [which for which, response in answers.items() if response.status_code == 201]
    (loser,) = [which for which, response in answers.items() if response.status_code == 409]
    check_error(answers[loser], 409, message="already exists")
    stored = hashlib.sha256(bodies[winner]).hexdigest()
    assert head(settings, "ink")["Metadata"] == {"sha256": stored}
    assert answers[winner].json()["sha256"] == stored
    listed = httpx.get(f"{gateway.base_url}/v1/loras").json()["data"]
    assert [(item["name"], item["sha256"]) for item in listed] == [("ink", stored)]
