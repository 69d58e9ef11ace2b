"""GENSVC_ENGINE_BACKEND=compile: every served shape compiled at start, no request recompiles.

These tests trace with dynamo's "eager" backend (GENSVC_COMPILE_COMPILER=eager): the guards that
decide whether a call recompiles are dynamo's, so a recompile shows here as it would with
inductor, in seconds instead of the minutes inductor's C++ build takes on a shared CPU.
test_backend_compile_inductor.py (slow) runs the same tests with inductor.

`torch._dynamo.config.error_on_recompile=True` and the stance `default` (not the service's
`eager_on_recompile`) turn any recompile into an error.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch

from generative_service.engine import Engine, EngineJob
from generative_service.errors import LoraError, ModelLoadError
from generative_service.schemas import ControlSpec, LoraSpec

from .engine_helpers import control_picture, max_diff, png_b64, req, run_one

pytestmark = pytest.mark.timeout(1200)  # the warm-up traces the UNet: minutes on a loaded CPU
A = "tiny-style-a"
B = "tiny-style-b"
LONG = ", ".join(["a photo of a cat on a sofa in the garden"] * 12)  # two prompt windows


def start_compiled(make_engine_settings, **overrides) -> Engine:
    torch._dynamo.reset()
    values: dict = {
        "engine_backend": "compile",
        "compile_compiler": "eager",
        "lora_hotswap_rank": 8,
        "compile_lora_slots": 2,
    }
    values.update(overrides)
    engine = Engine.from_settings(make_engine_settings(**values))
    engine.backend.serving_stance = "default"  # a recompile would happen (and raise, below)
    return engine


@pytest.fixture(scope="module")
def compiled_engine(make_engine_settings):
    yield start_compiled(make_engine_settings)
    torch._dynamo.reset()


@pytest.fixture
def no_recompiles():
    with torch._dynamo.config.patch(error_on_recompile=True):
        yield


def loras(*specs: tuple[str, float], **overrides):
    return req(loras=[LoraSpec(name=name, scale=scale) for name, scale in specs], **overrides)


def test_batches_cfg_loras_control_and_long_prompts_never_recompile(
    compiled_engine, engine, no_recompiles
):
    canny = ControlSpec(type="canny", image=png_b64(control_picture(0), data_url=True))
    cases = [
        req(),
        req(guidance_scale=1.0),
        req(num_images=2),
        req(num_images=3, guidance_scale=1.0),
        req(num_images=4),
        loras((A, 1.0)),
        loras((B, 0.5)),
        loras((A, 0.7), (B, 0.7)),
        loras((A, 1.0), num_images=4, guidance_scale=1.0),
        req(),  # LoRA off again
        req(control=canny),
        req(control=canny, num_images=2, guidance_scale=1.0),
        req(prompt=LONG),
        req(sampler="ddim"),  # int64 timesteps (Euler's are float32)
    ]
    for request in cases:
        compiled = run_one(compiled_engine, request)
        assert compiled.reproducibility["backend"]["ran"] == "compile"
        eager = run_one(engine, request)
        for ours, theirs in zip(compiled.images, eager.images, strict=True):
            assert max_diff(ours, theirs) <= 2, request


def test_lora_off_is_the_base_model_and_batches_equal_solo(compiled_engine, no_recompiles):
    base = run_one(compiled_engine, req(seed=4)).images[0]
    assert max_diff(run_one(compiled_engine, loras((A, 1.0), seed=4)).images[0], base) > 5
    assert max_diff(run_one(compiled_engine, req(seed=4)).images[0], base) == 0
    one, two = req(seed=4), req(seed=9, prompt="a blue car", guidance_scale=8.0)
    together = compiled_engine.run([EngineJob("one", one), EngineJob("two", two)])
    assert max_diff(together[0].images[0], base) <= 1
    assert max_diff(together[1].images[0], run_one(compiled_engine, two).images[0]) <= 1


def test_sizes_outside_the_compiled_set_run_eagerly(compiled_engine, engine, no_recompiles):
    out = run_one(compiled_engine, req(width=96, height=64))
    assert out.reproducibility["backend"] == {
        "name": "compile",
        "ran": "eager",
        "reason": "size not compiled",
    }
    assert max_diff(out.images[0], run_one(engine, req(width=96, height=64)).images[0]) <= 2


def test_too_many_adapters_are_refused_and_models_names_the_backend(
    compiled_engine, lora_dir, engine_cache_dir
):
    third = lora_dir / "tiny-style-third.safetensors"
    shutil.copy(lora_dir / f"{A}.safetensors", third)
    try:
        with pytest.raises(LoraError, match="at most 2 adapters"):
            run_one(compiled_engine, loras((A, 1.0), (B, 1.0), ("tiny-style-third", 0.5)))
    finally:
        third.unlink()
    described = compiled_engine.describe()["backend"]
    assert described["name"] == "compile"
    assert described["sizes"] == ["64x64"]
    assert described["batch"] == "mark_dynamic"
    # inductor's caches live with the model cache, so a second start skips the C++ build
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(engine_cache_dir / "torch-compile")


@pytest.mark.slow
def test_a_shape_the_warm_up_missed_fails_the_start(make_engine_settings, monkeypatch):
    from generative_service.engine.backends.compiled import CompiledBackend

    warm_up = CompiledBackend._warm_up
    monkeypatch.setattr(  # the warm-up compiles 96x64 only; the served size is 64x64
        CompiledBackend, "_warm_up", lambda self, width, height: warm_up(self, 96, 64)
    )
    with pytest.raises(ModelLoadError, match="did not reuse the warmed-up graph"):
        start_compiled(make_engine_settings)
    torch._dynamo.reset()


def test_composable_negation_runs_compiled_without_recompiling(make_engine_settings, engine):
    """The extra empty-prompt pass of a negative prompt (engine/negation.py) has at most the
    batch's rows, so the compiled UNet serves it with the graphs it has."""
    negating = start_compiled(make_engine_settings, negative_guidance=1.5)
    try:
        request_ = req(prompt="a red dog", negative_prompt="red", seed=13, num_images=2)
        with torch._dynamo.config.patch(error_on_recompile=True):
            out = run_one(negating, request_)
        assert out.reproducibility["backend"]["ran"] == "compile"
        assert out.reproducibility["negative_conditioning"].startswith("composable negation")
        eager = run_one(Engine.from_settings(make_engine_settings(negative_guidance=1.5)), request_)
        assert all(max_diff(a, b) <= 2 for a, b in zip(out.images, eager.images, strict=True))
        plain = run_one(engine, request_)  # eager, plain CFG
        assert max(max_diff(a, b) for a, b in zip(out.images, plain.images, strict=True)) > 10
    finally:
        torch._dynamo.reset()
