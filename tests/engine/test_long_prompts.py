"""Prompts longer than one CLIP window (75 tokens) are chunked, as AUTOMATIC1111 does, not cut."""

from __future__ import annotations

from generative_service.engine import EngineJob

from .engine_helpers import max_diff, req, run_one

LONG = ", ".join(["a photo of a cat on a sofa in the garden"] * 12)  # well over 75 tokens


def test_the_end_of_a_long_prompt_changes_the_image(engine):
    assert engine.prompts.chunk_count(LONG) >= 2
    dog = run_one(engine, req(prompt=f"{LONG}, a dog")).images[0]
    car = run_one(engine, req(prompt=f"{LONG}, a red car")).images[0]
    # truncated at 77 tokens (the old behaviour) both were the same prompt: the same image
    assert max_diff(dog, car) > 0
    dog_embeds = engine.prompts.encode(f"{LONG}, a dog").embeds
    car_embeds = engine.prompts.encode(f"{LONG}, a red car").embeds
    assert (dog_embeds[:, :77] == car_embeds[:, :77]).all()  # same first window
    assert (dog_embeds[:, -77:] != car_embeds[:, -77:]).any()  # the tail is in the last one


def test_short_prompts_keep_one_window(engine):
    embedding = engine.prompts.encode("a photo of a cat")
    assert embedding.embeds.shape[1] == 77
    long = engine.prompts.encode(LONG)
    assert long.embeds.shape[1] == 77 * engine.prompts.chunk_count(LONG)
    assert long.pooled.shape == embedding.pooled.shape


def test_long_prompts_in_a_batch_equal_alone(engine):
    requests = {
        "long": req(prompt=f"{LONG}, a dog", seed=3),
        "long-negative": req(prompt="a cat", negative_prompt=LONG, seed=4),
        "short": req(prompt="a photo of a cat", seed=5),
        "long-2": req(prompt=f"{LONG}, a red car", seed=6, num_images=2),
    }
    alone = {name: run_one(engine, request, name).images for name, request in requests.items()}
    together = engine.run([EngineJob(name, request) for name, request in requests.items()])
    for output in together:
        for solo, batched in zip(alone[output.job_id], output.images, strict=True):
            assert max_diff(solo, batched) <= 1, output.job_id


def test_long_negative_prompt_is_used_whole(engine):
    base = run_one(engine, req(prompt="a cat", negative_prompt=f"{LONG}, a dog")).images[0]
    other = run_one(engine, req(prompt="a cat", negative_prompt=f"{LONG}, a car")).images[0]
    assert max_diff(base, other) > 0
