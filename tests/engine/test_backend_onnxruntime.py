"""GENSVC_ENGINE_BACKEND=onnxruntime: the same images as eager (within 2/255), graphs cached on disk."""

from __future__ import annotations

import pytest

from generative_service.engine import Engine, EngineJob
from generative_service.errors import ModelLoadError
from generative_service.schemas import ControlSpec, LoraSpec, PreviewSpec

from .engine_helpers import control_picture, max_diff, png_b64, req, run_one

TOLERANCE = 2  # per pixel, out of 255
A = "tiny-style-a"
B = "tiny-style-b"


@pytest.fixture(scope="module")
def ort_engine(make_engine_settings) -> Engine:
    return Engine.from_settings(make_engine_settings(engine_backend="onnxruntime"))


def canny(picture: int, **overrides):
    image = png_b64(control_picture(picture), data_url=True)
    return req(control=ControlSpec(type="canny", image=image), **overrides)


def loras(*specs: tuple[str, float], **overrides):
    return req(loras=[LoraSpec(name=name, scale=scale) for name, scale in specs], **overrides)


@pytest.mark.parametrize(
    "request_",
    [
        req(),
        req(guidance_scale=1.0),  # CFG off: half the UNet batch
        req(width=96, height=64, prompt="a red house"),
        canny(0),
        loras((A, 1.0)),
        loras((A, 0.6), (B, 0.8), seed=5),
    ],
    ids=["base", "no-cfg", "96x64", "canny", "lora", "two-loras"],
)
def test_images_match_eager(ort_engine, engine, request_):
    ort = run_one(ort_engine, request_)
    eager = run_one(engine, request_)
    assert max_diff(ort.images[0], eager.images[0]) <= TOLERANCE
    assert ort.reproducibility["backend"]["ran"] == "onnxruntime"
    assert eager.reproducibility["backend"] == {"name": "eager", "ran": "eager"}


def test_lora_graphs_leave_the_base_graph_untouched(ort_engine, engine):
    base = run_one(ort_engine, req(seed=3)).images[0]
    styled = run_one(ort_engine, loras((A, 1.0), seed=3)).images[0]
    assert max_diff(base, styled) > 5  # the LoRA graph really is another graph
    assert max_diff(run_one(ort_engine, req(seed=3)).images[0], base) == 0
    assert max_diff(base, run_one(engine, req(seed=3)).images[0]) <= TOLERANCE


def test_batch_equals_solo_with_per_image_guidance_and_previews(ort_engine):
    one = req(seed=11, guidance_scale=3.0, preview=PreviewSpec(every_n_steps=2, max_px=32))
    two = req(seed=12, guidance_scale=8.0, prompt="a blue car", num_images=2)
    steps: list = []
    together = ort_engine.run([EngineJob("one", one), EngineJob("two", two)], on_step=steps.append)
    assert together[0].reproducibility["batch"]["images"] == 3
    assert max_diff(together[0].images[0], run_one(ort_engine, one).images[0]) <= 1
    for index in range(2):
        assert max_diff(together[1].images[index], run_one(ort_engine, two).images[index]) <= 1
    previews = [step.preview for step in steps if step.job_id == "one" and step.preview]
    assert len(previews) == 2 and previews[0].size == (32, 32)


def test_canny_batch_equals_solo(ort_engine):
    one, two = canny(1), canny(2, seed=8, prompt="a blue car")
    together = ort_engine.run([EngineJob("one", one), EngineJob("two", two)])
    assert max_diff(together[0].images[0], run_one(ort_engine, one).images[0]) <= 1
    assert max_diff(together[1].images[0], run_one(ort_engine, two).images[0]) <= 1


def test_cancel_stops_at_once(ort_engine):
    seen: list[int] = []
    out = run_one(
        ort_engine,
        req(steps=8),
        on_step=lambda s: seen.append(s.step),
        is_canceled=lambda _: bool(seen),
    )
    assert out.canceled and out.images == [] and seen == [1]


def test_second_start_loads_the_cached_graphs_without_exporting(ort_engine, make_engine_settings):
    graphs = dict(ort_engine.backend.graphs)
    again = Engine.from_settings(make_engine_settings(engine_backend="onnxruntime"))
    assert again.backend.graphs == graphs
    assert set(graphs) == {"unet", "controlnet_canny", "controlnet_depth", "vae_decoder"}
    assert all(seconds == 0.0 for seconds in again.backend.start_seconds.values())


def test_unservable_size_runs_eagerly_and_says_so(ort_engine, engine):
    # 72 px = 9 latent pixels: the tiny UNet's upsampler needs an even latent size for the graph.
    out = run_one(ort_engine, req(width=72, height=64))
    assert out.reproducibility["backend"]["ran"] == "eager"
    assert max_diff(out.images[0], run_one(engine, req(width=72, height=64)).images[0]) == 0
    assert run_one(ort_engine, req()).reproducibility["backend"]["ran"] == "onnxruntime"


def test_models_description_names_the_backend(ort_engine, engine):
    described = ort_engine.describe()["backend"]
    assert described["name"] == "onnxruntime"
    assert described["provider"] == "CPUExecutionProvider"
    assert engine.describe()["backend"] == {"name": "eager"}


def test_missing_execution_provider_fails_at_start(make_engine_settings):
    with pytest.raises(ModelLoadError, match="GENSVC_ONNX_PROVIDER: cuda needs a CUDA device"):
        Engine.from_settings(
            make_engine_settings(engine_backend="onnxruntime", onnx_provider="cuda")
        )


@pytest.mark.parametrize("control", [False, True], ids=["plain", "canny"])
def test_composable_negation_matches_eager(make_engine_settings, control):
    """The extra empty-prompt UNet pass of a negative prompt (engine/negation.py) goes through
    the backend's graphs like the others (and takes the ControlNet's residuals with it)."""
    settings = {"negative_guidance": 1.5}
    ort_engine = Engine.from_settings(
        make_engine_settings(engine_backend="onnxruntime", **settings)
    )
    eager_engine = Engine.from_settings(make_engine_settings(**settings))
    request_ = (canny(1) if control else req()).model_copy(
        update={"prompt": "a red dog", "negative_prompt": "red", "seed": 13, "num_images": 2}
    )
    ort = run_one(ort_engine, request_)
    eager = run_one(eager_engine, request_)
    for ort_image, eager_image in zip(ort.images, eager.images, strict=True):  # 2 negated rows
        assert max_diff(ort_image, eager_image) <= TOLERANCE
    assert ort.reproducibility["backend"]["ran"] == "onnxruntime"
    assert ort.reproducibility["negative_conditioning"].startswith("composable negation")
