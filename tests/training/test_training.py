"""`gensvc models train-demo` end to end on the quick budget, and its resumable, deterministic loop."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from generative_service.training import demo
from generative_service.training.loop import StageConfig, StageMismatch, run_stage


def _train(out, work, *extra: str) -> int:
    return demo.main(
        [
            "--world",
            "digits",
            "--budget",
            "quick",
            "--out",
            str(out),
            "--work",
            str(work),
            "--no-eval",
            "--no-progress",
            *extra,
        ]
    )


def _unet_weights(bundle):
    return load_file(bundle / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def quick_bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    assert _train(root / "bundle", root / "work") == 0
    return root


@pytest.mark.slow  # the digits recipe, no longer the embedded model: ~30 s of CI's 15 min
def test_quick_training_writes_a_loadable_bundle(quick_bundle, monkeypatch):
    from diffusers import (
        ControlNetModel,
        StableDiffusionXLControlNetPipeline,
        StableDiffusionXLPipeline,
    )

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    bundle = quick_bundle / "bundle"
    info = json.loads((bundle / "bundle.json").read_text())
    assert info["default_size"] == 64 and info["loras"] == ["bold"]
    assert "Not evaluated" in (bundle / "MODEL_CARD.md").read_text()
    assert all(t.dtype == torch.float16 for t in _unet_weights(bundle).values())

    pipe = StableDiffusionXLPipeline.from_pretrained(bundle / "pipeline", torch_dtype=torch.float32)
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.vae.config.scaling_factor != 1.0  # measured, not the placeholder
    image = pipe(
        "a handwritten seven", num_inference_steps=2, generator=torch.Generator().manual_seed(0)
    ).images[0]
    assert image.size == (64, 64)

    pipe.load_lora_weights(bundle / "loras", weight_name="bold.safetensors", adapter_name="bold")
    controlnet = ControlNetModel.from_pretrained(
        bundle / "controlnet-canny", torch_dtype=torch.float32
    )
    control_pipe = StableDiffusionXLControlNetPipeline(**pipe.components, controlnet=controlnet)
    edges = image.convert("RGB")
    assert control_pipe("7", image=edges, num_inference_steps=2).images[0].size == (64, 64)


@pytest.mark.slow  # among the heaviest of the default suite: `make test-all` runs it
def test_retraining_reproduces_and_resume_reuses_checkpoints(quick_bundle, tmp_path):
    first = _unet_weights(quick_bundle / "bundle")
    assert _train(tmp_path / "again", tmp_path / "work") == 0  # fresh run, fresh work dir
    assert (
        _train(tmp_path / "resumed", quick_bundle / "work", "--resume") == 0
    )  # every stage done: load only
    for out in ("again", "resumed"):
        other = _unet_weights(tmp_path / out)
        assert first.keys() == other.keys()
        assert all(torch.equal(first[k], other[k]) for k in first), out


def test_without_options_the_shapes_world_trains_the_embedded_model(tmp_path):
    from generative_service.engine.paths import DEMO_ROOT

    args = demo._parser().parse_args([])
    assert (args.world, args.budget, args.out) == ("shapes", "full", None)
    assert demo.default_out("shapes", tmp_path) == DEMO_ROOT  # what GENSVC_MODEL=demo serves
    assert demo.default_out("digits", tmp_path) == tmp_path / "demo-digits"  # served by nothing


def _toy(steps: int, *, fail_at: int | None = None):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    target = torch.tensor([[1.0, -2.0, 3.0, 0.5]])

    def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
        if step == fail_at:
            raise KeyboardInterrupt  # the run is killed here
        x = torch.randn(8, 4, generator=gen)
        return (model(x) - x @ target.T).pow(2).mean()

    config = StageConfig(
        "toy", steps=steps, batch_size=8, lr=0.05, ema_decay=0.9, checkpoint_every=1
    )
    return model, loss_fn, config


def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    straight, loss_fn, config = _toy(12)
    run_stage(config, straight, loss_fn, work_dir=tmp_path / "a", resume=False, progress=False)

    resumed, loss_fn, _ = _toy(12, fail_at=5)
    with pytest.raises(KeyboardInterrupt):
        run_stage(config, resumed, loss_fn, work_dir=tmp_path / "b", resume=True, progress=False)
    resumed, loss_fn, _ = _toy(12)
    result = run_stage(
        config, resumed, loss_fn, work_dir=tmp_path / "b", resume=True, progress=False
    )

    assert result.steps == 12
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    model, loss_fn, config = _toy(3)
    run_stage(config, model, loss_fn, work_dir=tmp_path, resume=False, progress=False)
    other = StageConfig("toy", steps=6, batch_size=8, lr=0.05, ema_decay=0.9)
    with pytest.raises(StageMismatch, match="--resume"):
        run_stage(other, model, loss_fn, work_dir=tmp_path, resume=True, progress=False)
