"""Bad input: each raises a typed error whose message names the field."""

from __future__ import annotations

import pytest

from generative_service.errors import InvalidRequest, LoraError
from generative_service.schemas import GenerationRequest, LoraSpec

from .engine_helpers import req, run_one


def unchecked(**overrides):
    """A request carrying values the wire schema would reject (the engine must not trust it)."""
    return req().model_copy(update=overrides)


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"width": 100}, "width", "multiple of 8"),
        ({"height": 68}, "height", "multiple of 8"),
        ({"height": 56}, "height", "at least 64"),
        ({"height": 4096}, "height", "at most 2048 (GENSVC_MAX_SIDE)"),
        ({"sampler": "heun_fancy"}, "sampler", "known: dpmpp_2m_karras"),
        ({"steps": 0}, "steps", "between 1 and 150"),
        ({"num_images": 9}, "num_images", "at most 4"),
        (
            {"loras": [LoraSpec(name="missing-one")]},
            "loras[0].name",
            "known: tiny-style-a, tiny-style-b",
        ),
    ],
)
def test_bad_input_names_the_field(engine, overrides, field, words):
    request = unchecked(**overrides)
    with pytest.raises(InvalidRequest) as caught:
        engine.validate(request)
    assert caught.value.field == field
    assert caught.value.message.startswith(f"{field}: ") and words in caught.value.message
    with pytest.raises(InvalidRequest):
        run_one(engine, request)  # run() refuses it too, before any work


def test_unknown_lora_is_a_lora_error(engine):
    with pytest.raises(LoraError):
        engine.validate(req(loras=[LoraSpec(name="nope")]))


def test_valid_request_passes(engine):
    engine.validate(req())
    engine.validate(req(width=None, height=None, seed=None))  # defaults filled by the engine


def test_describe_lists_what_is_served(engine):
    info = engine.describe()
    assert info["base_model"] == "tiny"
    assert info["controlnets"] == ["canny", "depth"]
    assert "dpmpp_2m_karras" in info["samplers"] and info["default_sampler"] == "dpmpp_2m_karras"
    assert {"tiny-style-a", "tiny-style-b"} <= set(info["loras"])
    assert info["default_size"] == 64
    assert info["default_steps"] == GenerationRequest(prompt="x").steps  # what such a job runs
    assert info["limits"]["max_batch_images"] == 4
    assert info["attention"] == "sdpa" and info["device"] == "cpu"
