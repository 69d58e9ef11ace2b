"""`gensvc models train-demo --world shapes` on the quick budget, end to end through the Engine,
and the pieces the shapes evaluation stands on (issue #19).

The quick training (minutes on a loaded 2-core machine) and what uses it are `slow`."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from generative_service.training import demo
from generative_service.training import shapes as S
from generative_service.training import shapes_eval as E
from generative_service.training import shapes_model as M

_ROOT = Path(__file__).resolve().parents[2]


def _train(out, work, *extra: str) -> int:
    return demo.main(
        ["--world", "shapes", "--budget", "quick", "--out", str(out), "--work", str(work),
         "--no-eval", "--no-progress", *extra]
    )  # fmt: skip


@pytest.fixture(scope="module")
def quick_shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick-shapes")
    assert _train(root / "bundle", root / "work") == 0
    return root


def test_text_side_encodes_exactly_as_the_pipeline_does():
    """Training conditions the UNet on what serving will feed it, or nothing it learns applies."""
    from generative_service.training import components

    tokenizers = M.build_tokenizers()
    encoders = M.build_text_encoders(*tokenizers)
    pipe = components.assemble_pipeline(
        vae=M.build_vae(), unet=M.build_unet(), tokenizers=tokenizers, text_encoders=encoders
    )
    prompts = ["a red circle above a blue square", "two green triangles"]
    want, _, want_pooled, _ = pipe.encode_prompt(
        prompts, device="cpu", do_classifier_free_guidance=False
    )
    with torch.no_grad():
        got, got_pooled = M.TextSide(*encoders)(
            M.token_ids(tokenizers[0], prompts), M.token_ids(tokenizers[1], prompts)
        )
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_pooled, want_pooled)


def test_scene_set_prompts_are_true_of_their_scenes():
    tokenizers = M.build_tokenizers()
    data = M.scene_set(40, tokenizers, seed=3)
    images = ((data.pixels + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    for i, image in enumerate(images):
        found = S.detect(image)
        for row in data.options[i].unique():
            prompt = data.prompts[int(row)]
            assert prompt in S.prompts_for_scene(S.training_scenes(40, seed=3)[i])
        assert found, i


@pytest.mark.parametrize(
    ("prompt", "meaning"),
    [
        # count, then per object: colour, shape, x side, y side (0 = not said)
        ("a red circle above a blue square", (2, 1, 1, 0, 1, 3, 2, 0, 2)),
        ("a blue square below a red circle", (2, 3, 2, 0, 2, 1, 1, 0, 1)),
        ("a green triangle to the left of a yellow circle", (2, 2, 3, 1, 0, 4, 1, 2, 0)),
        ("a green triangle right of a yellow circle", (2, 2, 3, 2, 0, 4, 1, 1, 0)),
        ("a yellow square on the left", (1, 4, 2, 1, 0, 0, 0, 0, 0)),
        ("a red circle at the bottom", (1, 1, 1, 0, 2, 0, 0, 0, 0)),
        ("two green triangles", (2, 2, 3, 0, 0, 2, 3, 0, 0)),
        ("a pair of red squares", (2, 1, 2, 0, 0, 1, 2, 0, 0)),
        ("a circle and a square", (2, 0, 1, 0, 0, 0, 2, 0, 0)),
        ("red", (1, 1, 0, 0, 0, 0, 0, 0, 0)),
        ("a shape", (0, 0, 0, 0, 0, 0, 0, 0, 0)),
    ],
)
def test_prompt_meaning_names_each_objects_colour_shape_and_side(prompt, meaning):
    assert S.prompt_meaning(prompt) == meaning


def test_every_phrasing_has_a_meaning_and_relations_mirror_their_converse():
    meanings = {p: S.prompt_meaning(p) for p in S.every_phrasing()}
    assert all(len(m) == len(S.MEANING_CLASSES) for m in meanings.values())
    flip = {0: 0, 1: 2, 2: 1}
    for prompt, meaning in meanings.items():
        if " below " in prompt:  # "a A below a B" == "a B above a A" with the objects swapped
            first, second = prompt.split(" below ")
            converse = meanings[f"{second} above {first}"]
            assert meaning[1:5] == converse[5:9] and meaning[5:9] == converse[1:5]
            assert meaning[4] == flip[converse[4]]


@pytest.mark.timeout(600)
def test_text_pretraining_makes_above_and_below_read_apart(tmp_path):
    """The previous recipe's encoders were a bag of words: a prompt and its opposite relation
    encoded at cosine 0.99 and the model placed 4 % of relations right. A short pretraining on
    the layouts must already name them apart (the full stage trains 300 steps to 100 %)."""
    from generative_service.training.loop import StageConfig, run_stage

    tokenizers = M.build_tokenizers()
    text = M.TextSide(*M.build_text_encoders(*tokenizers))
    phrasings = M.Phrasings.build(tokenizers)
    pair = ["a red circle above a blue square", "a red circle below a blue square"]
    ids = [M.token_ids(t, pair) for t in tokenizers]

    def pooled_cosine() -> float:
        with torch.no_grad():
            _, pooled = text(*ids)
        return float(torch.nn.functional.cosine_similarity(pooled[0], pooled[1], dim=0))

    before = pooled_cosine()
    model = M.TextAndHeads(text, M.LayoutHeads())
    config = StageConfig("text", steps=60, batch_size=64, lr=3e-3, warmup_steps=10, seed=26)
    run_stage(
        config,
        model,
        M.text_loss(model, phrasings, batch_size=64),
        work_dir=tmp_path,
        resume=False,
        progress=False,
    )
    assert before > 0.95
    assert pooled_cosine() < before - 0.1
    assert M.layout_accuracy(model, phrasings) > 0.3


def test_vae_normalises_over_all_channels_at_once():
    """8 groups over 8 channels erased hue (feasibility run): every GroupNorm has one group."""
    norms = [m for m in M.build_vae().modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(m.num_groups == 1 for m in norms)


def test_unet_attends_to_the_text_at_both_resolutions():
    unet = M.build_unet()
    assert all(hasattr(b, "attentions") for b in unet.down_blocks)
    assert all(hasattr(b, "attentions") for b in unet.up_blocks)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quick_shapes_bundle_draws_through_the_engine(quick_shapes):
    bundle = quick_shapes / "bundle"
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["world"] == "shapes" and info["loras"] == ["pastel"]
    assert (bundle / "loras" / "pastel.safetensors").is_file()
    unet = load_file(bundle / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(t.dtype == torch.float16 for t in unet.values())
    training = json.loads((bundle / "training.json").read_text())
    assert set(training["vae_ceiling"]) == {"after_vae", "after_decoder"}
    assert "Not evaluated" in (bundle / "MODEL_CARD.md").read_text()

    from generative_service.training.drawing import EngineDrawer

    drawer = EngineDrawer(bundle, cache_dir=quick_shapes / "cache")
    images = drawer.draw(
        ["a red circle above a blue square", "a red circle above a blue square"],
        [1, 1],
        guidance=3.0,
        steps=2,
        rgb=True,
    )
    assert images.shape == (2, 64, 64, 3) and images.dtype == np.uint8
    assert np.array_equal(images[0], images[1])  # same seed, same image


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_resumed_quick_training_equals_an_uninterrupted_one(quick_shapes, tmp_path):
    """Kill-and-resume is exact: drop the later stages' checkpoints and resume."""
    work = tmp_path / "work"
    import shutil

    shutil.copytree(quick_shapes / "work", work)
    for name in ("decoder", "controlnet", "lora"):
        (work / f"{name}.pt").unlink()
    assert _train(tmp_path / "bundle", work, "--resume") == 0
    for part in ("unet", "vae"):
        a = load_file(quick_shapes / f"bundle/pipeline/{part}/diffusion_pytorch_model.safetensors")
        b = load_file(tmp_path / f"bundle/pipeline/{part}/diffusion_pytorch_model.safetensors")
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_retraining_on_an_earlier_bundles_vae_keeps_it_and_its_budget(quick_shapes, tmp_path):
    """--vae-from: the encoder is the source bundle's, bit for bit (the decoder is fine-tuned
    again); its VAE stage's minutes and ceiling are still on the card; text encoder 1 stays the
    random one (only encoder 2 learns the layouts)."""
    source = quick_shapes / "bundle"
    assert _train(tmp_path / "bundle", tmp_path / "work", "--vae-from", str(source)) == 0
    vae = "pipeline/vae/diffusion_pytorch_model.safetensors"
    a, b = load_file(source / vae), load_file(tmp_path / "bundle" / vae)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(("encoder.", "quant_conv.")))
    assert not all(torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    assert not (tmp_path / "work" / "vae.pt").exists()
    # from_pretrained would have written the source folder (this machine's path) into the config.
    assert "_name_or_path" not in json.loads(
        (tmp_path / "bundle/pipeline/vae/config.json").read_text()
    )
    training = json.loads((tmp_path / "bundle" / "training.json").read_text())
    earlier = json.loads((source / "training.json").read_text())
    assert training["vae_from"] == str(source)
    assert [s["name"] for s in training["stages"]][:2] == ["vae", "decoder"]
    assert training["stages"][0] == earlier["stages"][0]
    assert training["vae_ceiling"]["after_vae"] == earlier["vae_ceiling"]["after_vae"]

    randoms = M.build_text_encoders(*M.build_tokenizers())

    def fc1(state: dict) -> torch.Tensor:  # the saved files name it with or without text_model.
        return next(v for k, v in state.items() if k.endswith("encoder.layers.0.mlp.fc1.weight"))

    pairs = zip(("text_encoder", "text_encoder_2"), randoms, (True, False), strict=True)
    for folder, random, same in pairs:
        trained = load_file(tmp_path / "bundle" / f"pipeline/{folder}/model.safetensors")
        assert torch.equal(fc1(trained), fc1(random.half().state_dict())) is same, folder


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_training_on_from_an_earlier_bundles_unet(quick_shapes, tmp_path):
    """--unet-from: the text encoders are the source's bit for bit, the UNet starts from the
    source's and moves; the source's stages stay on the card beside `unet_more`."""
    source = quick_shapes / "bundle"
    assert _train(tmp_path / "bundle", tmp_path / "work", "--unet-from", str(source),
                  "--unet-steps", "3") == 0  # fmt: skip
    for part in ("text_encoder/model", "text_encoder_2/model", "vae/diffusion_pytorch_model"):
        a = load_file(source / f"pipeline/{part}.safetensors")
        b = load_file(tmp_path / f"bundle/pipeline/{part}.safetensors")
        decoder = ("decoder.", "post_quant_conv.")  # the decoder fine-tune runs again
        same = [torch.equal(a[k], b[k]) for k in a if not k.startswith(decoder)]
        assert a.keys() == b.keys() and all(same), part
    unet = "pipeline/unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(source / unet), load_file(tmp_path / "bundle" / unet)
    moved = [float((a[k].float() - b[k].float()).abs().max()) for k in a]
    # Trained on from the source's weights: every tensor near them, not a fresh random UNet.
    assert 0 < max(moved) < 0.05
    training = json.loads((tmp_path / "bundle" / "training.json").read_text())
    earlier = json.loads((source / "training.json").read_text())
    names = [s["name"] for s in training["stages"]]
    assert names == ["vae", "decoder", "text", "unet", "unet_more", "controlnet", "lora"]
    carried = {s["name"]: s for s in earlier["stages"]}
    for row in training["stages"]:
        if row["name"] in ("vae", "text", "unet"):
            assert row == {**carried[row["name"]], "config": earlier["config"][row["name"]]}
    assert training["stages"][4]["steps"] == 3
    assert training["unet_from"] == training["vae_from"] == str(source)
    card = (tmp_path / "bundle" / "MODEL_CARD.md").read_text()
    assert f"--unet-from {source}" in card and "| unet_more | 3 |" in card
    assert not (tmp_path / "work" / "unet.pt").exists()


def test_edge_f1_and_placement_read_real_renders_right():
    specs = [S.random_spec("two_objects", np.random.default_rng(i)) for i in range(4)]
    real = S.real_images(specs)
    assert E.edge_f1(real, S.canny_edges(real)) == pytest.approx(1.0)
    assert all(E.placed_like(a, a) for a in real)
    moved = np.roll(real, 12, axis=2)  # every shape 12 px to the right
    assert not any(E.placed_like(a, b) for a, b in zip(moved, real, strict=True))
    other = S.real_images(specs, seed_offset=7)
    assert E.edge_f1(other, S.canny_edges(real)) < 0.6


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_quality_benchmark_shapes_section_runs_on_a_bundle(quick_shapes):
    spec = importlib.util.spec_from_file_location("quality_bench", _ROOT / "benchmarks/quality.py")
    quality = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(quality)
    result = quality.shapes_rows(
        model=str(quick_shapes / "bundle"), per_category=1, guidances=(3.0,)
    )
    assert result["judge_on_real"]["overall"] == 1.0
    (row,) = result["rows"]
    assert set(row["accuracy"]) == {*S.CATEGORIES, "overall"} and row["images_per_second"] > 0
    text = quality.shapes_markdown(result)
    assert "| judge on real renders | 100.0 %" in text and "| 3 (default) |" in text
