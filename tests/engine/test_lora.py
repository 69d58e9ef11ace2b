"""LoRA: changes the image, blends, switches without reloading, and off means exactly the base."""

from __future__ import annotations

import shutil

import pytest

from generative_service.engine import Engine
from generative_service.errors import LoraError
from generative_service.schemas import LoraSpec

from .engine_helpers import max_diff, req, run_one

A = "tiny-style-a"
B = "tiny-style-b"


def with_loras(*specs: tuple[str, float], **overrides):
    return req(loras=[LoraSpec(name=name, scale=scale) for name, scale in specs], **overrides)


def test_lora_changes_the_image_and_off_restores_the_base_exactly(engine):
    base = run_one(engine, req()).images[0]
    styled = run_one(engine, with_loras((A, 1.0))).images[0]
    assert max_diff(base, styled) > 5
    assert max_diff(run_one(engine, req()).images[0], base) == 0  # bit-exact after deactivation


def test_scale_matters_and_two_loras_blend(engine):
    a_full = run_one(engine, with_loras((A, 1.0))).images[0]
    a_half = run_one(engine, with_loras((A, 0.5))).images[0]
    b_full = run_one(engine, with_loras((B, 1.0))).images[0]
    blend = run_one(engine, with_loras((A, 0.7), (B, 0.7))).images[0]
    assert max_diff(a_full, a_half) > 0
    assert max_diff(blend, a_full) > 0 and max_diff(blend, b_full) > 0
    assert max_diff(run_one(engine, with_loras((A, 1.0))).images[0], a_full) == 0  # switching back


def test_record_names_adapters_with_hashes(engine, lora_dir):
    import hashlib

    record = run_one(engine, with_loras((B, 0.8))).reproducibility
    expected = hashlib.sha256((lora_dir / f"{B}.safetensors").read_bytes()).hexdigest()
    assert record["loras"] == [{"name": B, "scale": 0.8, "sha256": expected}]


def test_unknown_lora_lists_known_ones(engine):
    with pytest.raises(LoraError) as caught:
        engine.validate(with_loras(("no-such-style", 1.0)))
    assert caught.value.field == "loras[0].name"
    assert A in caught.value.message and B in caught.value.message


@pytest.mark.parametrize(
    "content",
    [b"definitely not safetensors", None],
    ids=["garbage", "wrong-shapes"],
)
def test_broken_or_incompatible_lora_is_refused_and_engine_stays_usable(engine, lora_dir, content):
    import torch
    from safetensors.torch import save_file

    path = lora_dir / "broken.safetensors"
    if content is None:  # right layer names, wrong widths: made for another model
        key = "unet.down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
        save_file(
            {f"{key}.lora_A.weight": torch.ones(4, 7), f"{key}.lora_B.weight": torch.ones(7, 4)},
            str(path),
        )
    else:
        path.write_bytes(content)
    base = run_one(engine, req()).images[0]
    try:
        with pytest.raises(LoraError) as caught:
            run_one(engine, with_loras(("broken", 1.0)))
        assert caught.value.field == "loras[0]" and "broken" in caught.value.message
        assert max_diff(run_one(engine, req()).images[0], base) == 0
        assert max_diff(run_one(engine, with_loras((A, 1.0))).images[0], base) > 0
    finally:
        path.unlink()


def test_changed_adapter_file_is_reloaded(engine, lora_dir):
    path = lora_dir / "swapme.safetensors"
    shutil.copy(lora_dir / f"{A}.safetensors", path)
    try:
        first = run_one(engine, with_loras(("swapme", 1.0))).images[0]
        assert max_diff(first, run_one(engine, with_loras((A, 1.0))).images[0]) == 0
        shutil.copy(lora_dir / f"{B}.safetensors", path)
        second = run_one(engine, with_loras(("swapme", 1.0))).images[0]
        assert max_diff(second, run_one(engine, with_loras((B, 1.0))).images[0]) == 0
    finally:
        path.unlink()


def test_lru_keeps_at_most_cache_size_adapters(make_engine_settings):
    small = Engine.from_settings(make_engine_settings(lora_cache_size=1))
    a_first = run_one(small, with_loras((A, 1.0))).images[0]
    run_one(small, with_loras((B, 1.0)))
    assert small.loras.loaded == [B]
    assert max_diff(run_one(small, with_loras((A, 1.0))).images[0], a_first) == 0
    with pytest.raises(LoraError) as caught:
        run_one(small, with_loras((A, 1.0), (B, 1.0)))
    assert caught.value.field == "loras"


def test_hotswap_mode_gives_the_same_images(engine, make_engine_settings):
    swapping = Engine.from_settings(make_engine_settings(lora_cache_size=1, lora_hotswap_rank=8))
    for name in (A, B, A):
        expected = run_one(engine, with_loras((name, 1.0))).images[0]
        assert max_diff(run_one(swapping, with_loras((name, 1.0))).images[0], expected) <= 1
    assert swapping.loras.loaded == [A]
    assert max_diff(run_one(swapping, req()).images[0], run_one(engine, req()).images[0]) == 0
