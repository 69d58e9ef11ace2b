"""LoRA failures in a real worker process never leak into later jobs of any tenant."""

from __future__ import annotations

import httpx
import numpy as np


def _write_failing_lora(lora_dir, source) -> None:
    """A real adapter plus full (non-LoRA) UNet tensors: the worker's loader refuses it."""
    from safetensors.numpy import load_file, save_file

    tensors = load_file(str(source))
    tensors["unet.conv_in.weight"] = np.zeros((32, 4, 3, 3), dtype=np.float32)
    tensors["unet.conv_out.weight"] = np.zeros((4, 32, 3, 3), dtype=np.float32)
    save_file(tensors, str(lora_dir / "leaky.safetensors"))


def test_no_lora_image_is_the_exact_base_after_a_failed_lora_job(
    start_service, worker_settings, make_jobs
) -> None:
    settings = worker_settings()
    service = start_service(settings, workers=1)
    jobs = make_jobs(settings)
    samples = settings.cache_dir / "tiny" / "loras"
    upload = httpx.post(
        f"{service.base_url}/v1/loras/style",
        content=(samples / "tiny-style-a.safetensors").read_bytes(),
    )
    assert upload.status_code == 201, upload.text  # fits the layers the worker published
    # The failing file reaches the LoRA directory past the upload check (e.g. an operator's copy).
    _write_failing_lora(settings.lora_dir, samples / "tiny-style-a.safetensors")

    def run(**fields: object) -> str:  # one at a time: never batched together
        job_id = jobs.submit(seed=5, **fields)
        jobs.wait_terminal([job_id])
        return job_id

    before = run()
    styled = run(loras=[{"name": "style", "scale": 1.0}])
    broken = run(loras=[{"name": "leaky", "scale": 1.0}])
    after = run()
    records = {job_id: jobs.get(job_id) for job_id in (before, styled, broken, after)}

    assert records[broken].status == "failed"
    assert records[broken].error.code == "invalid_lora" and "leaky" in records[broken].error.message
    assert records[before].status == "succeeded", records[before].error
    assert records[after].status == "succeeded", records[after].error
    assert np.abs(jobs.pixels(styled) - jobs.pixels(before)).max() > 5  # the adapter shows
    # Pixel for pixel the base image again, not the adapter that was active before the failure.
    assert np.array_equal(jobs.pixels(after), jobs.pixels(before))
    assert records[after].reproducibility["loras"] == []


def test_an_adapter_for_another_architecture_is_refused_at_upload(
    start_service, worker_settings
) -> None:
    from safetensors.numpy import save

    service = start_service(worker_settings(), workers=1)
    layer = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    sd15_like = save({  # SD 1.5 widths (320/768) on layer names the tiny SDXL UNet also has
        f"{layer}.lora_A.weight": np.zeros((4, 320), dtype=np.float32),
        f"{layer}.lora_B.weight": np.zeros((320, 4), dtype=np.float32),
    })  # fmt: skip
    response = httpx.post(f"{service.base_url}/v1/loras/sd15", content=sd15_like)
    assert response.status_code == 422, response.text
    message = response.json()["error"]["message"]
    assert (
        "does not fit the served model 'tiny'" in message and "lora_A has shape [4, 320]" in message
    )
    assert httpx.get(f"{service.base_url}/v1/loras").json()["data"] == []
