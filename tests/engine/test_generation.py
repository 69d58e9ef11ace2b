"""Samplers, seeds, and batch == solo: what a user sees in the images."""

from __future__ import annotations

import json

import numpy as np
import pytest

from generative_service.engine import EngineJob
from generative_service.rules import SAMPLERS

from .engine_helpers import max_diff, pixels, req, run_one


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_makes_an_image_and_repeats_it(engine, sampler):
    first = run_one(engine, req(sampler=sampler, steps=3))
    again = run_one(engine, req(sampler=sampler, steps=3))
    (image,) = first.images
    assert image.size == (64, 64) and image.mode == "RGB"
    assert pixels(image).std() > 1.0, "not a flat image"
    assert max_diff(image, again.images[0]) == 0
    assert first.reproducibility["sampler"] == sampler


def test_samplers_differ(engine):
    euler = run_one(engine, req(sampler="euler", steps=3)).images[0]
    karras = run_one(engine, req(sampler="dpmpp_2m_karras", steps=3)).images[0]
    assert max_diff(euler, karras) > 0


def test_default_sampler_is_dpmpp_2m_karras(engine):
    record = run_one(engine, req()).reproducibility
    assert record["scheduler"]["class"] == "DPMSolverMultistepScheduler"
    config = record["scheduler"]["config"]
    assert config["algorithm_type"] == "dpmsolver++" and config["solver_order"] == 2
    assert config["use_karras_sigmas"] is True and config["final_sigmas_type"] == "zero"


def test_same_seed_same_image_different_seed_different_image(engine):
    a = run_one(engine, req(seed=11)).images[0]
    b = run_one(engine, req(seed=11)).images[0]
    c = run_one(engine, req(seed=12)).images[0]
    assert max_diff(a, b) == 0
    assert max_diff(a, c) > 10


def test_num_images_use_consecutive_seeds(engine):
    many = run_one(engine, req(seed=40, num_images=2))
    assert many.seeds == [40, 41]
    second_alone = run_one(engine, req(seed=41)).images[0]
    assert max_diff(many.images[1], second_alone) <= 1
    assert max_diff(many.images[0], many.images[1]) > 0


def test_prompt_and_guidance_change_the_image(engine):
    base = run_one(engine, req()).images[0]
    assert max_diff(base, run_one(engine, req(prompt="a blue robot")).images[0]) > 0
    assert max_diff(base, run_one(engine, req(guidance_scale=9.0)).images[0]) > 0
    assert max_diff(base, run_one(engine, req(negative_prompt="blurry")).images[0]) > 0


def test_batch_equals_solo_for_mixed_prompts_negatives_seeds_and_guidance(engine):
    requests = {
        "a": req(
            prompt="a photo of a cat", negative_prompt="", seed=5, guidance_scale=5.0, num_images=2
        ),
        "b": req(prompt="a red dog", negative_prompt="blurry", seed=7, guidance_scale=9.0),
        "c": req(prompt="a photo of a cat", negative_prompt="ugly", seed=3, guidance_scale=2.5),
    }
    steps: list[tuple[str, int]] = []
    batched = engine.run(
        [EngineJob(job_id, r) for job_id, r in requests.items()],
        on_step=lambda s: steps.append((s.job_id, s.step)),
    )
    # One pipeline call: every job reports step 1 before any job reports step 2.
    assert steps[:3] == [("a", 1), ("b", 1), ("c", 1)]
    assert [out.job_id for out in batched] == ["a", "b", "c"]
    for out in batched:
        solo = run_one(engine, requests[out.job_id], job_id=out.job_id)
        assert out.seeds == solo.seeds
        assert len(out.images) == len(solo.images) == requests[out.job_id].num_images
        for together, alone in zip(out.images, solo.images, strict=True):
            assert max_diff(together, alone) <= 1  # at most 1/255 per pixel
        assert out.reproducibility["batch"]["images"] == 4


def test_incompatible_jobs_are_run_in_separate_calls(engine):
    small = req(seed=2)
    other_steps = req(seed=2, steps=3)
    outputs = engine.run([EngineJob("x", small), EngineJob("y", other_steps)])
    assert max_diff(outputs[0].images[0], run_one(engine, small).images[0]) <= 1
    assert max_diff(outputs[1].images[0], run_one(engine, other_steps).images[0]) <= 1


def test_cfg_off_jobs_run_without_a_negative_branch(engine):
    out = run_one(engine, req(guidance_scale=1.0, negative_prompt="ignored"))
    assert out.reproducibility["cfg"] is False
    same = run_one(engine, req(guidance_scale=0.5, negative_prompt="other"))
    assert max_diff(out.images[0], same.images[0]) == 0


def test_seed_none_is_resolved_and_reported(engine):
    out = run_one(engine, req(seed=None))
    assert isinstance(out.seeds[0], int)
    again = run_one(engine, req(seed=out.seeds[0]))
    assert max_diff(out.images[0], again.images[0]) == 0


def test_reproducibility_record_names_parameters_and_file_hashes(engine, tiny_root):
    import hashlib

    record = run_one(engine, req(prompt="a red cat", seed=9)).reproducibility
    assert record["prompt"] == "a red cat" and record["seeds"] == [9] and record["steps"] == 4
    assert record["negative_conditioning"].startswith("zeros")
    unet_file = tiny_root / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors"
    expected = hashlib.sha256(unet_file.read_bytes()).hexdigest()
    assert (
        record["components"]["model"]["files"]["unet/diffusion_pytorch_model.safetensors"]
        == expected
    )
    assert record["software"]["diffusers"]
    assert np.isfinite(run_one(engine, req()).inference_ms)
    # Models are named by id and hash: no absolute path of the server's disks reaches a client.
    assert str(tiny_root) not in json.dumps(record)
    assert record["components"]["model"]["source"] == "local:tiny/pipeline"
    assert str(tiny_root) not in json.dumps(engine.describe())


def test_a_request_without_guidance_runs_the_models_default(engine):
    omitted = run_one(engine, req(guidance_scale=None))
    explicit = run_one(engine, req(guidance_scale=engine.default_guidance))
    assert omitted.reproducibility["guidance_scale"] == engine.default_guidance
    assert max_diff(omitted.images[0], explicit.images[0]) == 0


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_a_copied_scheduler_steps_exactly_like_a_freshly_built_one(engine, sampler):
    """Schedulers hands out copies of one never-used instance per sampler: each must denoise
    exactly as one built from the config, and two copies stepped in turn must not share state."""
    import inspect

    import torch

    from generative_service.engine.schedulers import Schedulers, make_scheduler

    schedulers = Schedulers(engine.scheduler_config)
    runs = [make_scheduler(sampler, engine.scheduler_config)] + [
        schedulers.new(sampler) for _ in range(2)
    ]
    generator = torch.Generator().manual_seed(0)
    start = torch.randn(1, 4, 8, 8, generator=generator)
    outputs = [torch.randn(1, 4, 8, 8, generator=generator) for _ in range(6)]
    samples = []
    for scheduler in runs:
        scheduler.set_timesteps(6)
        samples.append(start.clone())
    for i in range(6):  # one step of each run in turn, as two batches never do but a leak would
        for n, scheduler in enumerate(runs):
            extra = {}
            if "generator" in inspect.signature(scheduler.step).parameters:  # as diffusers asks
                extra = {"generator": torch.Generator().manual_seed(i)}
            t = scheduler.timesteps[i]
            samples[n] = scheduler.step(outputs[i], t, samples[n], **extra).prev_sample
        assert torch.equal(samples[0], samples[1]) and torch.equal(samples[0], samples[2])
