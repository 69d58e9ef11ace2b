"""GENSVC_ENGINE_BACKEND=compile: warmed up at start, then no request recompiles the UNet.

Inductor needs many minutes per graph on a shared 2-core machine, so these tests compile with
dynamo's "eager" backend: the same guards decide whether a call recompiles. Even so, tracing the
warm-up shapes took more than 5 minutes on the loaded development machine: slow tests.
"""

from __future__ import annotations

import pytest
import torch

from generative_service.engine import Engine, EngineJob
from generative_service.errors import LoraError
from generative_service.schemas import ControlSpec, LoraSpec

from .engine_helpers import control_picture, max_diff, png_b64, req, run_one

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]
A = "tiny-style-a"
B = "tiny-style-b"


@pytest.fixture(scope="module")
def compiled_engine(make_engine_settings) -> Engine:
    from generative_service.engine.backends.compiled import CompiledBackend

    torch._dynamo.reset()
    CompiledBackend.compile_options = {"dynamic": True, "backend": "eager"}
    engine = Engine.from_settings(
        make_engine_settings(engine_backend="compile", lora_hotswap_rank=8, compile_lora_slots=2)
    )
    engine.backend.serving_stance = "default"  # a recompile would happen (and raise, below)
    yield engine
    CompiledBackend.compile_options = {"dynamic": True}
    torch._dynamo.reset()


@pytest.fixture
def no_recompiles(monkeypatch):
    monkeypatch.setattr(torch._dynamo.config, "error_on_recompile", True)


def loras(*specs: tuple[str, float], **overrides):
    return req(loras=[LoraSpec(name=name, scale=scale) for name, scale in specs], **overrides)


def test_batches_cfg_loras_and_control_never_recompile(compiled_engine, engine, no_recompiles):
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
        req(control=canny),
        req(control=canny, num_images=2, guidance_scale=1.0),
        req(),
    ]
    for request in cases:
        compiled = run_one(compiled_engine, request)
        assert compiled.reproducibility["backend"]["ran"] == "compile"
        eager = run_one(engine, request)
        for ours, theirs in zip(compiled.images, eager.images, strict=True):
            assert max_diff(ours, theirs) <= 2


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


def test_too_many_adapters_are_refused(compiled_engine):
    with pytest.raises(LoraError, match="at most 2 adapters"):
        run_one(compiled_engine, loras((A, 1.0), (B, 1.0), (A, 0.5)))
    assert compiled_engine.describe()["backend"]["sizes"] == ["64x64"]
