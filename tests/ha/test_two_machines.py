"""Two machines, simulated: the gateway and the GPU worker share no directory, only Redis and an
S3-protocol server (moto, in a subprocess). Upload a LoRA, generate with it, download the image,
replace and delete the LoRA: every step works, and neither process touches the other's disk."""

from __future__ import annotations

import hashlib
import io

import httpx
import numpy as np
import pytest
from PIL import Image


def files_under(root) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*") if path.is_file()}


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_gateway_and_worker_share_only_redis_and_the_bucket(
    make_s3_settings, start_service, tmp_path, model_cache_dir
) -> None:
    gateway_disk, worker_disk = tmp_path / "gateway-machine", tmp_path / "worker-machine"
    gateway_settings = make_s3_settings(
        storage_dir=gateway_disk / "images",
        lora_dir=gateway_disk / "loras",
        cache_dir=gateway_disk / "cache",
    )
    worker_settings = gateway_settings.model_copy(
        update={
            "storage_dir": worker_disk / "images",
            "lora_dir": worker_disk / "loras",
            "lora_cache_dir": worker_disk / "lora-cache",
            "cache_dir": model_cache_dir,  # the worker machine's models (built tiny model)
        }
    )
    worker = start_service(worker_settings, workers=1, gateway=False)
    gateway = start_service(gateway_settings, workers=0)
    before_worker = files_under(model_cache_dir)
    samples = model_cache_dir / "tiny" / "loras"
    style_a = (samples / "tiny-style-a.safetensors").read_bytes()
    style_b = (samples / "tiny-style-b.safetensors").read_bytes()

    http = httpx.Client(base_url=gateway.base_url, timeout=60)
    client = gateway.client()

    def generate(**fields) -> tuple[dict, np.ndarray]:
        job = client.submit(prompt="a red circle", steps=3, seed=11, **fields)
        done = client.wait(job.id, timeout=180)
        assert done.status == "succeeded", (done.error, worker.logs("worker-0")[-3000:])
        data = client.image(job.id, 0)
        return done.reproducibility, np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16)

    upload = http.post(
        "/v1/loras", files={"file": ("ink.safetensors", style_a, "application/octet-stream")}
    )
    assert upload.status_code == 201, upload.text
    _, base = generate()
    record_a, styled_a = generate(loras=[{"name": "ink", "scale": 1.0}])
    assert record_a["loras"][0]["sha256"] == hashlib.sha256(style_a).hexdigest()
    assert np.abs(styled_a - base).max() > 5  # the uploaded adapter was used

    # Replace it: the worker's cached copy of the old version is never used again.
    assert http.delete("/v1/loras/ink").status_code == 204
    assert http.post("/v1/loras/ink", content=style_b).status_code == 201
    record_b, styled_b = generate(loras=[{"name": "ink", "scale": 1.0}])
    assert record_b["loras"][0]["sha256"] == hashlib.sha256(style_b).hexdigest()
    assert np.abs(styled_b - styled_a).max() > 5

    # Delete it: a job that names it fails at once, on either machine's check.
    assert http.delete("/v1/loras/ink").status_code == 204
    refused = http.post("/v1/jobs", json={"prompt": "x", "loras": [{"name": "ink"}]})
    assert refused.status_code == 422 and "unknown LoRA 'ink'" in refused.text

    # Nothing of the other machine's: the gateway wrote no file at all, the worker only its
    # cache of adapters by hash; images and adapters live in the bucket.
    assert not gateway_disk.exists() or files_under(gateway_disk) == set()
    assert not (worker_disk / "images").exists() and not (worker_disk / "loras").exists()
    assert files_under(worker_disk / "lora-cache") == {
        f"{hashlib.sha256(style_a).hexdigest()}.safetensors",
        f"{hashlib.sha256(style_b).hexdigest()}.safetensors",
    }
    new_in_models = files_under(model_cache_dir) - before_worker
    assert not any(name.endswith((".png", ".safetensors")) for name in new_in_models)
