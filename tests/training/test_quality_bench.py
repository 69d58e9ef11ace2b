"""benchmarks/quality.py plumbing: the real-SDXL metrics (FID, CLIP score) run end to end on tiny
models (the tiny SDXL bundle, a tiny random CLIP), and the demo rows come out of the Engine."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from generative_service.training import data as D
from generative_service.training import shapes as S

_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location(
        "quality_bench", _ROOT / "benchmarks" / "quality.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel + processor saved like a real local checkpoint."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from generative_service.engine.tokenizer import build_clip_tokenizer, clip_special_ids

    path = tmp_path_factory.mktemp("tiny-clip")
    tokenizer = build_clip_tokenizer(["a photo of a cat", "a red bus in the city"], 600)
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        **clip_special_ids(tokenizer),
    )
    vision = dict(
        image_size=32,
        patch_size=8,
        hidden_size=32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
    )
    CLIPModel(
        CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)
    ).save_pretrained(path)
    processor = CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    CLIPProcessor(image_processor=processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def _reference_dir(path, count: int = 12):
    path.mkdir()
    images = D.render(np.random.default_rng(0).integers(0, 17, size=(count, 8, 8)))
    for i, image in enumerate(images):
        Image.fromarray((image * 255).astype(np.uint8)).convert("RGB").save(path / f"{i:02d}.png")
    return path


def test_sdxl_metrics_run_on_tiny_models(quality, tiny_clip, tmp_path, model_cache_dir):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# comment\na photo of a cat\n\na red bus in the city\na cat on a bus\n")
    result = quality.sdxl_rows(
        model="tiny",
        clip_model=str(tiny_clip),
        reference_dir=str(_reference_dir(tmp_path / "ref")),
        prompts_file=prompts,
        size=64,
        steps=2,
        device="cpu",
        cache_dir=model_cache_dir,
    )
    assert result["prompts"] == 3 and result["reference_images"] == 12
    assert 0.0 <= result["clip_score"] <= 100.0
    assert math.isfinite(result["fid"]) and result["fid"] > 0
    text = quality.sdxl_markdown(result)
    assert "FID" in text and f"{result['fid']:.2f}" in text


def test_fid_is_zero_for_identical_sets_and_grows_with_difference(tiny_clip, tmp_path):
    from generative_service.training import image_metrics as M

    features = M.FeatureModel(tiny_clip)
    reference = M.load_images(_reference_dir(tmp_path / "ref", count=24))
    noise = [
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8))
        for i in range(24)
    ]
    ref = features.features(reference)
    assert abs(M.fid(ref, ref)) < 1e-6
    assert M.fid(features.features(noise), ref) > M.fid(ref[::2], ref[1::2])


def test_shapes_rows_of_the_demo_model_report_every_category(quality):
    result = quality.shapes_rows(model="demo", per_category=1, guidances=(1.5, 3.0))
    assert [row["guidance"] for row in result["rows"]] == [1.5, 3.0]
    assert set(result["rows"][0]["accuracy"]) == {*S.CATEGORIES, "overall"}
    assert result["judge_on_real"]["overall"] == 1.0  # the instrument first
    text = quality.shapes_markdown(result)
    assert f"| {result['default_guidance']:g} (default) |" in text  # the bundle's own guidance


@pytest.mark.slow  # trains a quick digits bundle first
def test_digits_rows_report_accuracy_per_setting(quality, tmp_path):
    from generative_service.training import demo

    bundle = tmp_path / "digits"
    argv = ["--world", "digits", "--budget", "quick", "--out", str(bundle), "--work", str(tmp_path / "work"), "--no-eval", "--no-progress"]  # fmt: skip
    assert demo.main(argv) == 0
    result = quality.demo_rows(
        per_digit=1, model=str(bundle), samplers=("euler",), guidances=(5.0,)
    )
    assert [row["guidance"] for row in result["by_guidance"]] == [5.0]
    assert [row["sampler"] for row in result["by_sampler"]] == ["euler"]
    assert 0.0 <= result["by_guidance"][0]["accuracy"] <= 1.0  # a quick model: plumbing only
    assert "| euler |" in quality.demo_markdown(result) and str(bundle) in quality.demo_markdown(
        result
    )
