"""ControlNet canny and depth: the control image visibly steers the result; bad images are refused."""

from __future__ import annotations

import base64
import io

import pytest
from PIL import Image

from generative_service.errors import InvalidRequest
from generative_service.schemas import ControlSpec

from .engine_helpers import control_picture, max_diff, png_b64, req, run_one


def with_control(kind: str, picture: Image.Image, **spec):
    return req(control=ControlSpec(type=kind, image=png_b64(picture, data_url=True), **spec))


@pytest.mark.parametrize("kind", ["canny", "depth"])
def test_control_changes_the_image_and_follows_the_control_picture(engine, kind):
    base = run_one(engine, req()).images[0]
    first = run_one(engine, with_control(kind, control_picture(0))).images[0]
    other = run_one(engine, with_control(kind, control_picture(5))).images[0]
    assert max_diff(base, first) > 5
    assert max_diff(first, other) > 0
    weaker = run_one(engine, with_control(kind, control_picture(0), conditioning_scale=0.0)).images[
        0
    ]
    assert max_diff(weaker, base) <= 1  # scale 0: no conditioning at all


def test_canny_thresholds_matter(engine):
    picture = control_picture(3)
    low = run_one(engine, with_control("canny", picture, canny_low=10, canny_high=20)).images[0]
    high = run_one(engine, with_control("canny", picture, canny_low=250, canny_high=255)).images[0]
    assert max_diff(low, high) > 0


def test_control_pipelines_share_the_base_modules(engine):
    base = engine.pipe
    for pipe in engine.models.control_pipes.values():
        for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
            assert getattr(pipe, name) is getattr(base, name)
        assert pipe.unet.dtype == base.unet.dtype


def test_control_batch_equals_solo(engine):
    from generative_service.engine import EngineJob

    one = with_control("canny", control_picture(1))
    two = with_control("canny", control_picture(2)).model_copy(
        update={"seed": 8, "prompt": "a blue car"}
    )
    together = engine.run([EngineJob("one", one), EngineJob("two", two)])
    assert max_diff(together[0].images[0], run_one(engine, one).images[0]) <= 1
    assert max_diff(together[1].images[0], run_one(engine, two).images[0]) <= 1
    assert together[0].reproducibility["control"]["type"] == "canny"


@pytest.mark.parametrize(
    "image",
    [
        "!!!not base64!!!",
        base64.b64encode(b"hello, not an image").decode(),
        "data:image/png;base64,",
    ],
    ids=["not-base64", "not-an-image", "empty"],
)
def test_undecodable_control_image_is_an_input_error(engine, image):
    request = req(control=ControlSpec(type="canny", image=image))
    with pytest.raises(InvalidRequest) as caught:
        engine.validate(request)
    assert caught.value.field == "control.image"
    assert caught.value.message.startswith("control.image: ")
    with pytest.raises(InvalidRequest):
        run_one(engine, request)


def test_decompression_bomb_is_refused_before_decoding(engine):
    buffer = io.BytesIO()
    Image.new("1", (300, 300)).save(buffer, format="PNG")  # tiny file, 90 000 pixels > 256*256
    request = req(
        control=ControlSpec(type="depth", image=base64.b64encode(buffer.getvalue()).decode())
    )
    with pytest.raises(InvalidRequest) as caught:
        engine.validate(request)
    assert caught.value.field == "control.image" and "65536" in caught.value.message
