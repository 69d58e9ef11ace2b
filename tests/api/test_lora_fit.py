"""LoRA uploads must fit the served model: checked against the layer shapes a worker publishes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from api_helpers import check_error
from safetensors.numpy import save

LAYER = "mid_block.attentions.0.to_q"
LAYERS = {
    "unet": {LAYER: [32, 32], "conv_in": [32, 4, 3, 3]},
    "text_encoder": {"text_model.encoder.layers.0.self_attn.q_proj": [16, 16]},
}


@pytest.fixture
def served(api_client, settings, redis):
    redis.set(settings.keys.model_layers, json.dumps(LAYERS))
    return api_client


def _file(tensors: dict[str, tuple]) -> bytes:
    return save({key: np.zeros(shape, dtype=np.float32) for key, shape in tensors.items()})


@pytest.mark.parametrize(
    "tensors",
    [
        {f"unet.{LAYER}.lora_A.weight": (4, 32), f"unet.{LAYER}.lora_B.weight": (32, 4)},
        {f"unet.{LAYER}.lora.down.weight": (8, 32), f"unet.{LAYER}.lora.up.weight": (32, 8)},
        {"unet.conv_in.lora_A.weight": (4, 4, 3, 3), "unet.conv_in.lora_B.weight": (32, 4, 1, 1)},
        {
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight": (2, 16),
            "text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_B.weight": (16, 2),
        },
        {
            "lora_unet_mid_block_attentions_0_to_q.lora_down.weight": (4, 32),
            "lora_unet_mid_block_attentions_0_to_q.lora_up.weight": (32, 4),
            "lora_unet_mid_block_attentions_0_to_q.alpha": (),
        },
    ],
    ids=["peft", "old-diffusers", "conv", "text-encoder", "kohya"],
)
def test_an_adapter_that_fits_is_accepted(served, tensors):
    response = served.post("/v1/loras/fits", content=_file(tensors))
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        (
            {f"unet.{LAYER}.lora_A.weight": (4, 768), f"unet.{LAYER}.lora_B.weight": (768, 4)},
            f"unet.{LAYER}: lora_A has shape [4, 768], the layer needs [4, 32]",
        ),
        (
            {
                "unet.down_blocks.3.attn.to_k.lora_A.weight": (4, 32),
                "unet.down_blocks.3.attn.to_k.lora_B.weight": (32, 4),
            },
            "the model has no layer unet.down_blocks.3.attn.to_k",
        ),
        ({f"unet.{LAYER}.lora_A.weight": (4, 32)}, f"unet.{LAYER}: lora_B weight is missing"),
        (
            {f"unet.{LAYER}.lora_A.weight": (4, 32), f"unet.{LAYER}.lora_B.weight": (32, 2)},
            "lora_B has shape [32, 2], the layer needs [32, 4]",
        ),
        (
            {"lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 32)},
            "no layer unet 'input_blocks_4_1_proj_in'",
        ),
        ({"unet.lora_weights_blob": (4, 32)}, "not a LoRA weight name this service can load"),
    ],
    ids=[
        "other-architecture",
        "unknown-layer",
        "half-a-pair",
        "rank-mismatch",
        "kohya-sgm-names",
        "odd-name",
    ],
)
def test_an_adapter_that_does_not_fit_is_422(served, settings, tensors, message):
    error = check_error(
        served.post("/v1/loras/misfit", content=_file(tensors)), 422, "invalid_lora", message
    )
    assert "does not fit the served model 'tiny'" in error["message"]
    assert served.get("/v1/loras").json()["data"] == []
