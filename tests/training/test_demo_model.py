"""The committed demo model (GENSVC_MODEL=demo), served through the Engine: it draws what it is asked.

Thresholds are the ones the issue promises; the measured values are in the model card.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors import safe_open

from generative_service.engine.paths import DEMO_ROOT
from generative_service.rules import SAMPLERS
from generative_service.training import data as D
from generative_service.training import evaluate as E

SEEDS_PER_DIGIT = 4  # 40 images: 95 % allows two misses


def test_bundle_is_small_fp16_and_documented(demo_info):
    files = [p for p in DEMO_ROOT.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 16_000_000
    for name in (
        "pipeline/model_index.json",
        "controlnet-canny/config.json",
        "loras/bold.safetensors",
        "MODEL_CARD.md",
    ):
        assert (DEMO_ROOT / name).is_file(), name
    with safe_open(DEMO_ROOT / "pipeline/unet/diffusion_pytorch_model.safetensors", "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    assert demo_info["default_size"] == 64
    card = (DEMO_ROOT / "MODEL_CARD.md").read_text()
    report = json.loads((DEMO_ROOT / "evaluation.json").read_text())
    assert report["budget"] == "full" and "prompted-digit accuracy" in card


def test_draws_the_prompted_digit(demo_drawer, demo_info, judge):
    items = E.eval_set(SEEDS_PER_DIGIT, seed_base=77_000)  # seeds the card's evaluation did not use
    images = demo_drawer.draw(
        [i.prompt for i in items], [i.seed for i in items], guidance=demo_info["default_guidance"]
    )
    assert images.shape == (len(items), 64, 64)
    assert E.accuracy(judge, images, [i.label for i in items]) >= 0.95


def test_canny_control_steers_the_shape(demo_drawer, demo_info, judge):
    controls, labels = E.real_digits(1)  # held-out digits: neither UNet nor ControlNet saw them
    prompts = [D.GENERIC_PROMPTS[0]] * len(labels)  # the text does not say which digit
    seeds = list(range(500, 500 + len(labels)))
    guidance = demo_info["default_guidance"]
    with_control = demo_drawer.draw(
        prompts, seeds, guidance=guidance, controls=controls, conditioning_scale=1.0
    )
    without = demo_drawer.draw(prompts, seeds, guidance=guidance)
    edges = D.canny_edges(controls)
    f1_with, f1_without = E.edge_f1(with_control, edges), E.edge_f1(without, edges)
    assert f1_with >= 0.8 and f1_with > f1_without + 0.3
    assert E.accuracy(judge, with_control, labels) >= 0.8  # the control alone picks the digit


def test_bold_lora_thickens_strokes_and_leaves_no_trace(demo_drawer, demo_info, judge):
    items = E.eval_set(1, seed_base=88_000)
    prompts, seeds, labels = (
        [i.prompt for i in items],
        [i.seed for i in items],
        [i.label for i in items],
    )
    guidance = demo_info["default_guidance"]
    base = demo_drawer.draw(prompts, seeds, guidance=guidance)
    bold = demo_drawer.draw(prompts, seeds, guidance=guidance, loras={"bold": 1.0})
    after = demo_drawer.draw(prompts, seeds, guidance=guidance)
    assert D.ink_fraction(bold).mean() > D.ink_fraction(base).mean() + 0.07
    assert E.accuracy(judge, bold, labels) >= 0.8  # still the digit asked for
    assert np.array_equal(base, after)  # adapter removed: the base model's exact output


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_draws_the_prompted_digit(demo_drawer, demo_info, judge, sampler):
    items = E.eval_set(1, seed_base=66_000)
    images = demo_drawer.draw(
        [i.prompt for i in items],
        [i.seed for i in items],
        guidance=demo_info["default_guidance"],
        sampler=sampler,
    )
    assert E.accuracy(judge, images, [i.label for i in items]) >= 0.9
