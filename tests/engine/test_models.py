"""Model resolution: tiny builds once and deterministically; bad paths fail naming the setting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from generative_service.engine import Engine
from generative_service.engine.hashing import FileHasher
from generative_service.engine.paths import DEMO_ROOT, is_bundle
from generative_service.errors import InvalidRequest, ModelLoadError
from generative_service.schemas import ControlSpec

from .engine_helpers import control_picture, png_b64, req, run_one


def test_tiny_bundle_layout(tiny_root):
    for part in (
        "pipeline/model_index.json",
        "controlnet-canny",
        "controlnet-depth",
        "depth-estimator",
        "bundle.json",
        "MODEL_CARD.md",
    ):
        assert (tiny_root / part).exists(), part
    assert sorted(p.name for p in (tiny_root / "loras").iterdir()) == [
        "tiny-style-a.safetensors",
        "tiny-style-b.safetensors",
    ]
    assert json.loads((tiny_root / "bundle.json").read_text())["default_size"] == 64
    tokenizer = json.loads((tiny_root / "pipeline/tokenizer/tokenizer_config.json").read_text())
    assert tokenizer["model_max_length"] == 77


def test_tiny_build_is_deterministic(tmp_path, tiny_root):
    from generative_service.engine.tiny import build_tiny

    again = build_tiny(tmp_path / "again")
    hasher = FileHasher(None)
    assert hasher.tree(again) == hasher.tree(tiny_root)


@pytest.mark.parametrize(
    ("overrides", "setting"),
    [
        ({"model": "/nonexistent/sdxl-model"}, "GENSVC_MODEL"),
        ({"controlnet_canny": "/nonexistent/canny"}, "GENSVC_CONTROLNET_CANNY"),
        ({"controlnet_depth": "./no/such/depth"}, "GENSVC_CONTROLNET_DEPTH"),
        ({"depth_estimator": "/nonexistent/dpt"}, "GENSVC_DEPTH_ESTIMATOR"),
        ({"device": "cuda:3"}, "GENSVC_DEVICE"),
    ],
)
def test_missing_model_path_names_the_setting(make_engine_settings, overrides, setting):
    import torch

    if setting == "GENSVC_DEVICE" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ModelLoadError) as caught:
        Engine.from_settings(make_engine_settings(**overrides))
    assert caught.value.message.startswith(f"{setting}: ")


def test_broken_model_dir_names_the_setting(make_engine_settings, tmp_path, tiny_root):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_root / "pipeline", broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelLoadError) as caught:
        Engine.from_settings(make_engine_settings(model=str(broken)))
    assert caught.value.message.startswith("GENSVC_MODEL: ") and str(broken) in caught.value.message


def test_incompatible_controlnet_names_the_setting(make_engine_settings, tmp_path, tiny_root):
    other = tmp_path / "other-cn"
    shutil.copytree(tiny_root / "controlnet-canny", other)
    config = json.loads((other / "config.json").read_text())
    config["cross_attention_dim"] = 99
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError) as caught:
        Engine.from_settings(make_engine_settings(controlnet_canny=str(other)))
    assert caught.value.message.startswith("GENSVC_CONTROLNET_CANNY: ")


def test_demo_model_missing_is_explained(make_engine_settings):
    if is_bundle(DEMO_ROOT):
        pytest.skip("the demo model is built")
    with pytest.raises(ModelLoadError) as caught:
        Engine.from_settings(make_engine_settings(model="demo"))
    assert (
        caught.value.message.startswith("GENSVC_MODEL: ") and "train-demo" in caught.value.message
    )


def test_plain_pipeline_dir_loads_without_controlnets(make_engine_settings, tiny_root):
    plain = Engine.from_settings(make_engine_settings(model=str(tiny_root / "pipeline")))
    assert plain.describe()["controlnets"] == []
    assert run_one(plain, req()).images[0].size == (64, 64)
    with pytest.raises(InvalidRequest) as caught:
        plain.validate(req(control=ControlSpec(type="canny", image=png_b64(control_picture()))))
    assert caught.value.field == "control.type"


def test_bundle_dir_by_path_matches_tiny(engine, make_engine_settings, tiny_root: Path):
    from .engine_helpers import max_diff

    by_path = Engine.from_settings(make_engine_settings(model=str(tiny_root)))
    assert by_path.describe()["controlnets"] == ["canny", "depth"]
    assert max_diff(run_one(by_path, req()).images[0], run_one(engine, req()).images[0]) == 0
