"""The pure-python parts: batch keys, paths, tokenizer; and that they do not import torch."""

from __future__ import annotations

import subprocess
import sys

from generative_service.engine.compatibility import batch_key, images_in
from generative_service.engine.paths import (
    default_size,
    list_lora_names,
    model_root,
    resolve_lora_dir,
)
from generative_service.schemas import ControlSpec, GenerationRequest, LoraSpec
from generative_service.settings import Settings


def request(**overrides) -> GenerationRequest:
    values = {
        "prompt": "a cat",
        "width": 64,
        "height": 64,
        "steps": 4,
        "seed": 1,
        "guidance_scale": 5.0,
    }
    values.update(overrides)
    return GenerationRequest(**values)


def test_gateway_imports_do_not_pull_torch():
    code = (
        "import sys, generative_service.engine, generative_service.engine.compatibility, generative_service.engine.paths;"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_batch_key_ignores_per_job_fields():
    base = batch_key(request())
    same = request(
        prompt="a dog",
        negative_prompt="ugly",
        seed=9,
        guidance_scale=8.0,
        num_images=3,
        control=None,
        preview={"every_n_steps": 2},
    )
    assert batch_key(same) == base
    assert images_in(same) == 3


def test_batch_key_separates_what_changes_the_call():
    base = batch_key(request())
    control = ControlSpec(type="canny", image="aGk=")
    for changed in (
        request(width=128),
        request(height=128),
        request(steps=5),
        request(sampler="euler"),
        request(loras=[LoraSpec(name="a")]),
        request(loras=[LoraSpec(name="a", scale=0.5)]),
        request(control=control),
        request(control=control.model_copy(update={"conditioning_scale": 0.3})),
        request(guidance_scale=1.0),
    ):
        assert batch_key(changed) != base
    assert batch_key(request(guidance_scale=0.0)) == batch_key(
        request(guidance_scale=1.0)
    )  # both CFG off
    two = [LoraSpec(name="a"), LoraSpec(name="b", scale=0.5)]
    assert batch_key(request(loras=two)) == batch_key(request(loras=list(reversed(two))))
    assert batch_key(request(control=control)) == batch_key(
        request(control=control.model_copy(update={"image": "b3RoZXI=", "canny_low": 1}))
    )


def test_paths(tmp_path):
    tiny = Settings(model="tiny", cache_dir=tmp_path)
    assert model_root(tiny) == tmp_path / "tiny"
    assert resolve_lora_dir(tiny) == tmp_path / "loras"
    assert default_size(tiny) == 64
    assert (
        default_size(Settings(model="stabilityai/stable-diffusion-xl-base-1.0", cache_dir=tmp_path))
        == 1024
    )
    assert model_root(Settings(model="stabilityai/stable-diffusion-xl-base-1.0")) is None
    assert model_root(Settings(model=str(tmp_path))) == tmp_path
    assert default_size(Settings(model="tiny", default_size=128)) == 128
    assert (
        list_lora_names(Settings(model="tiny", cache_dir=tmp_path, lora_dir=tmp_path / "none"))
        == []
    )


def test_default_lora_dir_is_seeded_once_from_the_bundle(tmp_path, tiny_root):
    import shutil

    shutil.copytree(tiny_root, tmp_path / "tiny")
    settings = Settings(model="tiny", cache_dir=tmp_path)
    assert list_lora_names(settings) == ["tiny-style-a", "tiny-style-b"]
    (tmp_path / "loras" / "tiny-style-a.safetensors").unlink()  # a user removed it
    assert list_lora_names(settings) == ["tiny-style-b"]  # not re-seeded


def test_tokenizer_matches_clip_conventions():
    from generative_service.engine.tokenizer import build_clip_tokenizer, clip_special_ids

    corpus = ["a photo of a cat", "a drawing of a dog"] * 5
    tokenizer = build_clip_tokenizer(corpus, vocab_size=600)
    assert tokenizer.model_max_length == 77
    ids = clip_special_ids(tokenizer)
    assert ids["eos_token_id"] == ids["pad_token_id"] != ids["bos_token_id"]
    encoded = tokenizer("A PHOTO of a cat", padding="max_length", max_length=77).input_ids
    assert (
        len(encoded) == 77
        and encoded[0] == ids["bos_token_id"]
        and encoded[-1] == ids["pad_token_id"]
    )
    assert "photo</w>" in tokenizer.convert_ids_to_tokens(
        encoded
    )  # a merge learned from the corpus
    assert (
        tokenizer.unk_token_id not in tokenizer("ünseen wörds ✓").input_ids[1:-1]
    )  # bytes, never unknown
    assert build_clip_tokenizer(corpus, vocab_size=600).get_vocab() == tokenizer.get_vocab()
