"""Composable negation: a negative prompt takes its concept away (engine/negation.py)."""

from __future__ import annotations

import pytest
import torch

from generative_service.engine import EngineJob
from generative_service.engine.negation import NegatedForward, plan_negation

from .engine_helpers import max_diff, req, run_one

RATIO = 1.5


@pytest.fixture(scope="module")
def negating_engine(make_engine_settings):
    from generative_service.engine import Engine

    return Engine.from_settings(make_engine_settings(negative_guidance=RATIO))


def test_a_negative_prompt_changes_the_image_and_says_how(engine, negating_engine):
    request = req(prompt="a red dog", negative_prompt="red", seed=11)
    plain = run_one(engine, request)
    negated = run_one(negating_engine, request)
    again = run_one(negating_engine, request)
    assert max_diff(plain.images[0], negated.images[0]) > 0
    assert max_diff(negated.images[0], again.images[0]) == 0
    assert negated.reproducibility["negative_conditioning"].startswith("composable negation")
    assert plain.reproducibility["negative_conditioning"] == "encoded"
    assert negating_engine.describe()["negative_guidance"] == RATIO
    assert engine.describe()["negative_guidance"] == 0.0


def test_jobs_without_a_negative_prompt_are_untouched_and_batch_equals_solo(
    engine, negating_engine
):
    requests = {
        "a": req(prompt="a photo of a cat", negative_prompt="", seed=5, num_images=2),
        "b": req(prompt="a red dog", negative_prompt="red", seed=7, guidance_scale=9.0),
        "c": req(prompt="a photo of a cat", negative_prompt="ugly", seed=3, guidance_scale=2.5),
    }
    batched = negating_engine.run([EngineJob(job_id, r) for job_id, r in requests.items()])
    for out in batched:
        solo = run_one(negating_engine, requests[out.job_id], job_id=out.job_id)
        for together, alone in zip(out.images, solo.images, strict=True):
            assert max_diff(together, alone) <= 1
    plain_a = run_one(engine, requests["a"], job_id="a")
    for negated_image, plain_image in zip(batched[0].images, plain_a.images, strict=True):
        assert max_diff(negated_image, plain_image) <= 1  # no negative prompt: plain CFG
    plain_b = run_one(engine, requests["b"], job_id="b")
    assert max_diff(batched[1].images[0], plain_b.images[0]) > 10


def test_the_wrapped_unet_returns_the_composable_unconditional_in_negated_rows(engine):
    """The real tiny UNet, two images, only the second with a negative prompt: the CFG call's
    unconditional half comes back as e0 + ratio g / (g - 1) (e(neg) - e0) there, untouched in row 0."""
    unet = engine.pipe.unet
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, unet.config.in_channels, 8, 8, generator=generator)
    dim = unet.config.cross_attention_dim
    texts = torch.randn(4, 77, dim, generator=generator)  # neg 0, neg 1, pos 0, pos 1
    pooled_dim = engine.pipe.text_encoder_2.config.projection_dim
    pooled = torch.randn(4, pooled_dim, generator=generator)
    time_ids = torch.tensor([[64.0, 64.0, 0.0, 0.0, 64.0, 64.0]] * 4)
    empty = (torch.zeros(1, 77, dim), torch.zeros(1, pooled_dim))
    guidance = [5.0, 4.0]
    negation = plan_negation([False, True], guidance, RATIO, empty)
    assert negation is not None and negation.rows == [1]
    t = torch.tensor(500)

    def call(forward, sample, states, pool, ids):
        with torch.no_grad():
            return forward(sample, t, encoder_hidden_states=states, return_dict=False,
                           added_cond_kwargs={"text_embeds": pool, "time_ids": ids})[0]  # fmt: skip

    doubled = torch.cat([latents, latents])
    wrapped = call(NegatedForward(unet.forward, negation, 2), doubled, texts, pooled, time_ids)
    plain = call(unet.forward, doubled, texts, pooled, time_ids)
    e0 = call(unet.forward, latents[1:], empty[0], empty[1], time_ids[3:])
    k = RATIO * guidance[1] / (guidance[1] - 1.0)
    assert torch.equal(wrapped[0], plain[0]) and torch.equal(wrapped[2:], plain[2:])
    assert torch.allclose(wrapped[1], e0[0] + k * (plain[1] - e0[0]), atol=1e-5)
    assert plan_negation([False, True], guidance, 0.0, empty) is None  # ratio 0: plain CFG
