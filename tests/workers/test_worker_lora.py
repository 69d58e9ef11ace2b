"""LoRA failures in a real worker process never leak into later jobs of any tenant."""

from __future__ import annotations

import shutil

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
    start_service(settings, workers=1, gateway=False)
    jobs = make_jobs(settings)
    samples = settings.cache_dir / "tiny" / "loras"
    settings.lora_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(samples / "tiny-style-a.safetensors", settings.lora_dir / "style.safetensors")
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
    assert records[after].status == "succeeded" and records[before].status == "succeeded"
    assert np.abs(jobs.pixels(styled) - jobs.pixels(before)).max() > 5  # the adapter shows
    # Pixel for pixel the base image again, not the adapter that was active before the failure.
    assert np.array_equal(jobs.pixels(after), jobs.pixels(before))
    assert records[after].reproducibility["loras"] == []
