"""The committed demo model (GENSVC_MODEL=demo, the shapes world of issue #19), served through the
Engine: it draws what the prompt says, its LoRA and ControlNet do what they claim, and a request
without guidance runs the model's own.

The minimums are the trained bundle's evaluation (evaluation.json, MODEL_CARD.md) minus a margin
for the few prompts drawn here, on seeds the card's evaluation did not use. While the embedded
bundle is a quick-budget stand-in (its images are blobs), the tests that read images skip.
"""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from safetensors import safe_open

from generative_service.engine import EngineJob
from generative_service.engine.paths import DEMO_ROOT
from generative_service.rules import SAMPLERS
from generative_service.schemas import GenerationRequest
from generative_service.training import shapes as S
from generative_service.training import shapes_eval

PER_CATEGORY = 8  # 40 images; one miss in a category costs 12.5 points
# The embedded bundle's evaluation.json (100 prompts per category, guidance 3): single 0.91, two
# objects 0.67, counting 0.87, colour attribution 0.91, position 0.94 (overall 0.86); two objects
# (no colours named) is under the 85 % (#19 stays open). Minimums: a miss (two on two
# objects) under what these 8 per category drew (0.875, 0.75, 0.875, 0.875, 0.75; overall 0.825).
MIN_ACCURACY = {
    "single": 0.75,
    "two_objects": 0.5,
    "counting": 0.75,
    "colour_attribution": 0.75,
    "position": 0.625,
    "overall": 0.75,
}
MIN_PLACED_WITH_CONTROL = 0.5  # shapes where the canny control put them (evaluation: `placed_on`)
MIN_SAMPLER_SINGLE = 0.5  # single-object accuracy with every sampler
MIN_NEGATIVE = 0.75  # `a {c} {s}` with negative `{c}`: no {c} object (`without_negative_colour`)
COMMON = {"steps": shapes_eval.STEPS, "sampler": shapes_eval.SAMPLER, "rgb": True}


@pytest.fixture(scope="module")
def trained(demo_info) -> None:
    if demo_info.get("budget") == "quick":
        pytest.skip(
            "the embedded demo bundle is a quick-budget stand-in; `scripts/embed-demo` the trained one"
        )


@pytest.fixture(scope="module")
def guidance(demo_info) -> float:
    return float(demo_info["default_guidance"])


def test_bundle_is_the_shapes_model_small_fp16_and_documented(demo_info):
    files = [p for p in DEMO_ROOT.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".pt"]  # no training checkpoints
    assert sum(p.stat().st_size for p in files) <= 36_000_000
    for name in (
        "pipeline/model_index.json",
        "controlnet-canny/config.json",
        "loras/pastel.safetensors",
        "MODEL_CARD.md",
    ):
        assert (DEMO_ROOT / name).is_file(), name
    with safe_open(DEMO_ROOT / "pipeline/unet/diffusion_pytorch_model.safetensors", "pt") as f:
        assert {str(f.get_slice(k).get_dtype()) for k in f.keys()} == {"F16"}
    assert (demo_info["world"], demo_info["default_size"], demo_info["loras"]) == (
        "shapes",
        64,
        ["pastel"],
    )
    report = json.loads((DEMO_ROOT / "evaluation.json").read_text())
    card = (DEMO_ROOT / "MODEL_CARD.md").read_text()
    assert report["budget"] == demo_info["budget"] and "# demo (shapes)" in card
    if demo_info["budget"] != "quick":  # the trained bundle: measured, with its grid
        assert "| category | model | judge on real renders |" in card
        assert (DEMO_ROOT / report["evaluation"]["grid"]).is_file()


def _job(prompt: str, seed: int, **fields) -> EngineJob:
    request = GenerationRequest(prompt=prompt, seed=seed, width=64, height=64, steps=20, **fields)
    return EngineJob(uuid.uuid4().hex, request)


def test_a_request_without_guidance_runs_the_models_default(demo_drawer, guidance):
    omitted, explicit = demo_drawer.engine.run(
        [_job("a red circle above a blue square", 5), _job("a red circle above a blue square", 5, guidance_scale=guidance)]
    )  # fmt: skip
    assert (
        omitted.reproducibility["guidance_scale"] == guidance != 7.5
    )  # the model's, not the rules'
    assert np.array_equal(np.asarray(omitted.images[0]), np.asarray(explicit.images[0]))


@pytest.mark.slow  # draws through the Engine: minutes on CI's 2 cores
def test_draws_what_the_prompt_says_in_every_category(demo_drawer, guidance, trained):
    specs = S.eval_specs(PER_CATEGORY, seed_base=77_000)
    images = demo_drawer.draw(
        [s.prompt for s in specs], [s.seed for s in specs], guidance=guidance, **COMMON
    )
    accuracy = S.accuracy_by_category(specs, images)
    assert all(accuracy[c] >= MIN_ACCURACY[c] for c in MIN_ACCURACY), accuracy


@pytest.mark.slow  # draws through the Engine: minutes on CI's 2 cores
def test_a_negative_colour_is_not_drawn(demo_drawer, guidance, trained):
    asks = [(c, s) for c in S.COLOURS for s in ("circle", "square")]
    drawn = demo_drawer.draw(
        [f"a {c} {s}" for c, s in asks],
        [88_000 + i for i in range(len(asks))],
        guidance=guidance,
        negative_prompts=[c for c, _ in asks],
        **COMMON,
    )
    refused = [
        all(f.colour != c for f in S.detect(image))
        for (c, _), image in zip(asks, drawn, strict=True)
    ]
    assert np.mean(refused) >= MIN_NEGATIVE, refused


@pytest.mark.slow  # draws through the Engine: minutes on CI's 2 cores
def test_pastel_lora_lowers_saturation_and_removal_is_exact(demo_drawer, guidance, demo_info):
    specs = S.eval_specs(1, seed_base=89_000)
    prompts, seeds = [s.prompt for s in specs], [s.seed for s in specs]
    base = demo_drawer.draw(prompts, seeds, guidance=guidance, **COMMON)
    pastel = demo_drawer.draw(prompts, seeds, guidance=guidance, loras={"pastel": 1.0}, **COMMON)
    after = demo_drawer.draw(prompts, seeds, guidance=guidance, **COMMON)
    assert np.array_equal(base, after)  # adapter removed: the base model's exact output
    # Pastel = halfway to white (evaluation: saturation 0.47 with it, 0.70 without, real pastel
    # renders 0.35). The previous bundle's decoder could not draw pastel: 0.73 with, 0.71 without.
    assert S.saturation(pastel) < S.saturation(base) - 0.1, (
        S.saturation(pastel),
        S.saturation(base),
    )


@pytest.mark.slow  # draws through the Engine: minutes on CI's 2 cores
def test_canny_control_places_the_shapes(demo_drawer, guidance, trained):
    specs = [
        S.random_spec(("single", "two_objects")[i % 2], np.random.default_rng(91_000 + i))
        for i in range(8)
    ]
    controls = S.real_images(specs, seed_offset=92_000)  # scenes neither UNet nor ControlNet saw
    prompts, seeds = [S.GENERIC_PROMPTS[0]] * len(specs), [93_000 + i for i in range(len(specs))]
    on = demo_drawer.draw(
        prompts, seeds, guidance=guidance, controls=controls, conditioning_scale=1.0, **COMMON
    )
    off = demo_drawer.draw(prompts, seeds, guidance=guidance, **COMMON)
    placed = [shapes_eval.placed_like(a, b) for a, b in zip(on, controls, strict=True)]
    placed_off = [shapes_eval.placed_like(a, b) for a, b in zip(off, controls, strict=True)]
    assert np.mean(placed) >= MIN_PLACED_WITH_CONTROL and np.mean(placed) > np.mean(placed_off)
    edges = S.canny_edges(controls)
    assert shapes_eval.edge_f1(on, edges) > shapes_eval.edge_f1(off, edges)


@pytest.mark.slow
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_draws_the_prompted_shape(demo_drawer, guidance, trained, sampler):
    specs = [s for s in S.eval_specs(4, seed_base=94_000) if s.category == "single"]
    images = demo_drawer.draw(
        [s.prompt for s in specs],
        [s.seed for s in specs],
        guidance=guidance,
        steps=shapes_eval.STEPS,
        sampler=sampler,
        rgb=True,
    )
    assert S.accuracy_by_category(specs, images)["single"] >= MIN_SAMPLER_SINGLE


@pytest.mark.slow  # a gateway and a worker on the demo model: ~1 min on CI's 2 cores
def test_a_negative_colour_is_not_drawn_through_the_running_service(start_service, settings):
    """What a client of the running service sees: `a {c} {s}` with negative `{c}` (the demo
    bundle's composable negation), the downloaded PNG judged, and the job saying how it ran."""
    import io

    import httpx
    from PIL import Image

    service = start_service(settings.model_copy(update={"model": "demo"}))
    asks = [("red", "circle"), ("green", "square"), ("blue", "triangle"), ("yellow", "circle")]
    refused = []
    with httpx.Client(base_url=service.base_url, timeout=180) as http:
        for i, (colour, shape) in enumerate(asks):
            body = {"prompt": f"a {colour} {shape}", "negative_prompt": colour,
                    "steps": 20, "seed": 91_000 + i}  # fmt: skip
            answer = http.post("/v1/jobs", json=body, headers={"Prefer": "wait=150"})
            job = answer.json()
            assert answer.status_code == 200 and job["status"] == "succeeded", answer.text
            conditioning = job["reproducibility"]["negative_conditioning"]
            assert conditioning.startswith("composable negation"), conditioning
            png = http.get(f"/v1/jobs/{job['id']}/images/0")
            image = np.asarray(Image.open(io.BytesIO(png.content)).convert("RGB"))
            refused.append(all(f.colour != colour for f in S.detect(image)))
    assert np.mean(refused) >= MIN_NEGATIVE, refused
