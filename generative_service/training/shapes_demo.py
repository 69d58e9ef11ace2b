"""`gensvc models train-demo --world shapes`: train the shapes demo model (issue #19).

Stages: VAE (then its reconstructions are read by the exact judge: the ceiling of everything
after it) -> latent scaling factor -> decoder-only VAE fine-tune (pastel scenes included) -> text
encoder 2 pretrained on the prompts' layouts, then frozen (encoder 1 stays random) -> UNet ->
canny ControlNet -> `pastel` style LoRA; then the bundle (fp16 safetensors) and, unless
`--no-eval`, the evaluation of `shapes_eval` through the service's Engine and the model card.
`--vae-from BUNDLE` takes an earlier run's VAE stage instead of training it again.

Budgets are step counts, not wall-clock time, so a retrain reproduces the model. Checkpoints go
to the work directory (default CACHE_DIR/train-demo/shapes-BUDGET) every `checkpoint_every` steps;
`--resume` continues there, bit-exact with an uninterrupted run.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

LORA_NAME = "pastel"
DEFAULT_GUIDANCE = 3.0
# Composable negation (engine/negation.py) at 1.5 x guidance: `a {c} {s}` with negative `{c}` drew
# no {c} object 82 % of the time (40 prompts), against 5 % with plain CFG; 1.0 x: 48 %, 2.0 x: 80 %,
# 3.0 x: 72 %.
NEGATIVE_GUIDANCE = 1.5
BUDGETS = ("quick", "short", "full")


def stage_configs(budget: str) -> dict:
    """Hyperparameters of every stage for a budget.

    `quick`: seconds, for tests. `short`: what a shared, loaded 2-core CPU trains in about an
    hour. `full`: the recipe for a quiet machine (~2 h on 2 idle cores).
    """
    from generative_service.training.loop import StageConfig as C

    if budget == "quick":
        return {
            "vae": C("vae", steps=4, batch_size=8, seed=21, checkpoint_every=2),
            "text": C("text", steps=4, batch_size=16, seed=26, checkpoint_every=2),
            "unet": C("unet", steps=4, batch_size=8, ema_decay=0.999, seed=22, checkpoint_every=2),
            "decoder": C("decoder", steps=2, batch_size=4, seed=23),
            "controlnet": C("controlnet", steps=2, batch_size=4, seed=24),
            "lora": C("lora", steps=2, batch_size=4, seed=25),
        }
    short = budget == "short"
    return {
        "vae": C("vae", steps=450 if short else 2000, batch_size=16 if short else 32, lr=2e-3,
                 warmup_steps=30, seed=21, checkpoint_every=25),
        "text": C("text", steps=300, batch_size=128, lr=3e-3, warmup_steps=20, seed=26,
                  checkpoint_every=50),
        "unet": C("unet", steps=600 if short else 2400, batch_size=32 if short else 64, lr=1e-3,
                  warmup_steps=50, ema_decay=0.999, seed=22, checkpoint_every=25),
        "decoder": C("decoder", steps=300 if short else 1200, batch_size=16 if short else 32,
                     lr=5e-4, warmup_steps=10, seed=23, checkpoint_every=25),
        "controlnet": C("controlnet", steps=40 if short else 400, batch_size=16 if short else 32,
                        lr=2e-3, warmup_steps=10, seed=24, checkpoint_every=20),
        "lora": C("lora", steps=30 if short else 400, batch_size=16 if short else 32, lr=3e-3,
                  warmup_steps=5, seed=25, checkpoint_every=20),
    }  # fmt: skip


def scene_count(budget: str) -> int:
    """Training scenes rendered for a budget."""
    return {"quick": 64, "short": 12_000, "full": 30_000}[budget]


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def train(
    out: Path,
    *,
    budget: str,
    work: Path,
    resume: bool,
    evaluate: bool = True,
    progress: bool = True,
    eval_per_category: int | None = None,
    stop_after: str | None = None,
    vae_from: Path | None = None,
    unet_from: Path | None = None,
    unet_steps: int | None = None,
) -> dict:
    """Train every stage, write the bundle to `out`, evaluate it, write the card; returns the report.

    `stop_after` ("vae", "decoder", "unet"): train up to that stage only (its checkpoints stay in
    `work` for a later `resume`) and return without a bundle. `vae_from` (a bundle directory of
    this recipe): its VAE stands for the VAE stage (its minutes and ceiling come from its
    training.json, so the card still states the whole budget); the decoder fine-tune runs again
    from its decoder, a quarter of its steps. `unet_from` (a bundle of this recipe; implies
    `vae_from` the same bundle unless that is given): its text encoders and UNet stand for the text
    and UNet stages, and the UNet trains on for `unet_steps` more (default a third of the UNet
    stage's: 800 on the full budget; stage `unet_more`, on this tree's prompt mixture); the
    ControlNet and the LoRA are trained again over it.
    """
    import copy

    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from generative_service.training import bundle, components, shapes, stages
    from generative_service.training import shapes_model as M
    from generative_service.training.loop import run_stage

    began = time.monotonic()
    configs = stage_configs(budget)
    if unet_from is not None:
        vae_from = vae_from if vae_from is not None else unet_from
    tokenizers = M.build_tokenizers()
    text_encoders = M.build_text_encoders(*tokenizers)
    text = M.TextSide(*text_encoders)
    vae, unet = M.build_vae(), M.build_unet()
    data = M.scene_set(scene_count(budget), tokenizers, seed=1)
    _log(f"{len(data.pixels)} scenes, {len(data.prompts)} distinct prompts")
    pixels = data.pixels
    results: list[dict] = []  # every stage of the model, in order, with the config it ran with

    def stage(name: str, module, loss_fn) -> None:
        """Train one stage (resumable, in `work`) and keep its result for the card."""
        done = run_stage(
            configs[name], module, loss_fn, work_dir=work, resume=resume, progress=progress
        )
        results.append({**asdict(done), "config": asdict(configs[name])})

    def carry(source: dict, names: tuple[str, ...]) -> None:
        """The rows of stages an earlier run did (its minutes count in this model's budget)."""
        for row in source["stages"]:
            if row["name"] in names:
                results.append(
                    {**row, "config": row.get("config") or source["config"][row["name"]]}
                )

    if vae_from is None:
        # 1. VAE, then what its reconstructions let through (the judge reads them like real renders).
        stage(
            "vae",
            vae,
            M.vae_loss(vae, pixels, batch_size=configs["vae"].batch_size),
        )
        vae.requires_grad_(False)
        ceiling = {"after_vae": reconstruction_accuracy(vae, _ceiling_count(budget))}
        _log(f"VAE reconstructions judged: {ceiling['after_vae']}")
        mean, std = stages.encode_latents(vae, pixels)
        scale = stages.measure_scaling_factor(mean, std)
        vae.register_to_config(scaling_factor=scale)
    else:
        # The VAE stage done by an earlier run of this recipe: its encoder and scale (the decoder
        # fine-tune below runs again, from its decoder).
        vae, source = load_vae(vae_from)
        ceiling = {"after_vae": source["vae_ceiling"]["after_vae"]}
        scale = float(vae.config.scaling_factor)
        mean, std = stages.encode_latents(vae, pixels)
        carry(source, ("vae",))
        # Its decoder is fine-tuned already: a quarter of the steps teaches it the pastel scenes.
        configs["decoder"] = replace(
            configs["decoder"], steps=max(1, configs["decoder"].steps // 4)
        )
    latents = stages.Latents(mean, std, scale)
    if stop_after == "vae":
        return {"stopped_after": "vae", "vae_ceiling": ceiling}
    # The `pastel` LoRA's scenes: the first scenes of the training set again, drawn pastel (a
    # style needs fewer examples). The decoder learns to draw them; the LoRA, to ask for them.
    pastel = M.scene_set(min(len(data.pixels), 2000), tokenizers, seed=1, pastel=True)
    p_mean, p_std = stages.encode_latents(vae, pastel.pixels)
    pastel_latents = stages.Latents(p_mean, p_std, scale)

    # 2. Decoder-only fine-tune: the encoder stays frozen, so the latents the UNet trains on are
    #    the same whether this runs before or after the UNet (the feasibility run did it after).
    vae.decoder.requires_grad_(True)
    vae.post_quant_conv.requires_grad_(True)
    stage(
        "decoder",
        vae,
        M.decoder_loss(
            vae,
            latents,
            pixels,
            batch_size=configs["decoder"].batch_size,
            styled=(pastel_latents, pastel.pixels),
        ),
    )
    vae.requires_grad_(False)
    ceiling["after_decoder"] = reconstruction_accuracy(vae, _ceiling_count(budget))
    pastel_recon = pastel_saturation(vae, _ceiling_count(budget))
    _log(f"fine-tuned decoder reconstructions judged: {ceiling['after_decoder']}; {pastel_recon}")

    if stop_after == "decoder":
        return {"stopped_after": "decoder", "vae_ceiling": ceiling}

    # 3. Both text encoders learn to name each prompt's layout, then stay frozen.
    phrasings = M.Phrasings.build(tokenizers)
    if unet_from is None:
        with_heads = M.TextAndHeads(text, M.LayoutHeads())
        if "first" not in M.PRETRAINED_ENCODERS:
            text.encoder.requires_grad_(False)
            with_heads.heads.first.requires_grad_(False)
        stage(
            "text",
            with_heads,
            M.text_loss(with_heads, phrasings, batch_size=configs["text"].batch_size),
        )
        layout = M.layout_accuracy(with_heads, phrasings)
    else:
        source = load_text_and_unet(unet_from, tokenizers, text, unet)
        carry(source, ("text", "unet", "unet_more"))
        rounds = sum(1 for row in source["stages"] if row["name"] == "unet_more")
        configs["unet_more"] = replace(
            configs["unet"],
            name="unet_more",
            steps=unet_steps or max(1, configs["unet"].steps // 3),
            lr=3e-4,
            warmup_steps=min(20, configs["unet"].warmup_steps),
            seed=27 + rounds,  # each round on draws other batches
        )
        layout = source["text_layout_accuracy"]
    text.requires_grad_(False)
    _log(f"text encoders: the pooled embedding names the layout of {layout:.1%} of the phrasings")
    table = M.PromptTable.encode(text, data)

    # 4. UNet (from scratch, or on from an earlier run's).
    scheduler = components.noise_scheduler()
    unet_stage = "unet" if unet_from is None else "unet_more"
    stage(
        unet_stage,
        unet,
        M.unet_loss(unet, table, scheduler, latents, data, batch_size=configs["unet"].batch_size),
    )
    unet.requires_grad_(False)
    if stop_after == "unet":
        return {"stopped_after": "unet", "vae_ceiling": ceiling}

    # 5. Canny ControlNet over the frozen UNet.
    controlnet = components.build_controlnet(unet)  # the digits recipe's, same seeds
    edges = stages.edges_as_control(shapes.canny_edges(pixels_uint8(pixels)))
    stage(
        "controlnet",
        controlnet,
        M.controlnet_loss(
            controlnet,
            unet,
            table,
            scheduler,
            latents,
            data,
            edges,
            batch_size=configs["controlnet"].batch_size,
        ),
    )
    controlnet.requires_grad_(False)

    # 6. `pastel` LoRA on a copy of the frozen UNet (peft wraps the layers it targets).
    lora_config = LoraConfig(r=8, lora_alpha=8, target_modules=components.LORA_TARGETS)
    lora_unet = copy.deepcopy(unet)
    torch.manual_seed(6)  # peft draws the LoRA A matrices from the global generator
    lora_unet.add_adapter(lora_config, adapter_name=LORA_NAME)
    stage(
        "lora",
        lora_unet,
        M.lora_loss(
            lora_unet,
            M.PromptTable.encode(text, pastel),
            scheduler,
            pastel_latents,
            pastel,
            batch_size=configs["lora"].batch_size,
        ),
    )
    lora_state = {
        k: v.detach().clone()
        for k, v in get_peft_model_state_dict(lora_unet, adapter_name=LORA_NAME).items()
    }

    # 7. Bundle, evaluation through the engine, model card.
    pipe = components.assemble_pipeline(
        vae=vae, unet=unet, tokenizers=tokenizers, text_encoders=text_encoders
    )
    params = {
        "unet": components.count_params(unet),
        "vae": components.count_params(vae),
        "text_encoders": components.count_params(text),
        "controlnet": components.count_params(controlnet),
        "lora": sum(t.numel() for t in lora_state.values()),
    }
    bundle.save_bundle(
        out,
        pipe=pipe,
        controlnet=controlnet,
        lora_state=lora_state,
        lora_config=lora_config.to_dict(),
        info=bundle_info(budget),
        lora_name=LORA_NAME,
    )
    report = {
        "world": "shapes",
        "budget": budget,
        "machine": f"{platform.machine()} CPU, 2 torch threads",
        "config": {name: asdict(cfg) for name, cfg in configs.items()},
        "stages": results,
        "params": params,
        "scaling_factor": scale,
        "train_scenes": len(data.pixels),
        "train_prompts": len(data.prompts),
        "vae_ceiling": ceiling,
        "pastel_reconstruction_saturation": pastel_recon,
        "lora_rank": 8,
        "unet_channels": list(M.UNET_CHANNELS),
        "text_layout_accuracy": layout,
        "text_pretrained": list(M.PRETRAINED_ENCODERS),
        "vae_from": None if vae_from is None else str(vae_from),
        "unet_from": None if unet_from is None else str(unet_from),
        "phrasings": len(phrasings.prompts),
    }
    report["train_minutes"] = sum(r["seconds"] for r in results) / 60
    report["bundle_mb"] = bundle.bundle_bytes(out) / 1e6
    (Path(out) / "training.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    if evaluate:
        report["evaluation"] = evaluate_only(out, per_category=eval_per_category)["evaluation"]
    else:
        from generative_service.training import shapes_eval

        shapes_eval.write_card(out, report)
    report["run_minutes"] = (time.monotonic() - began) / 60
    return report


def evaluate_only(out: Path, *, per_category: int | None = None) -> dict:
    """Measure the bundle at `out` through the Engine and rewrite its card (`--eval-only`)."""
    from generative_service.training import shapes_eval

    report = json.loads((Path(out) / "training.json").read_text())
    count = per_category or shapes_eval.per_category_for(report["budget"])
    report["evaluation"] = shapes_eval.evaluate_bundle(out, per_category=count)
    shapes_eval.write_card(out, report)
    return report


def bundle_info(budget: str) -> dict:
    """bundle.json: what the engine and the gateway read."""
    return {
        "name": "demo",
        "world": "shapes",
        "default_size": 64,
        "default_guidance": DEFAULT_GUIDANCE,
        "negative_guidance": NEGATIVE_GUIDANCE,
        "default_sampler": "dpmpp_2m_karras",
        "prompt_hint": (
            "one or two flat shapes (circle, square, triangle) in red, green, blue or yellow, "
            'e.g. "a red circle above a blue square", "two green triangles", '
            '"a yellow square on the left"; LoRA "pastel"; canny control places the shapes'
        ),
        "loras": [LORA_NAME],
        "budget": budget,
    }


def load_vae(bundle_dir: Path):
    """The VAE of a bundle of this recipe in fp32 (frozen), and the bundle's training.json."""
    from diffusers import AutoencoderKL
    from safetensors.torch import load_file

    # NOTE: built from its config and weights, not from_pretrained, which records the folder it
    # read as `_name_or_path` and the new bundle's config would carry this machine's path.
    folder = Path(bundle_dir) / "pipeline" / "vae"
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(folder))
    vae.load_state_dict(load_file(folder / "diffusion_pytorch_model.safetensors"))  # fp16 -> fp32
    vae.requires_grad_(False)
    return vae, json.loads((Path(bundle_dir) / "training.json").read_text())


def load_text_and_unet(bundle_dir: Path, tokenizers, text, unet) -> dict:
    """Load a bundle of this recipe's text encoders and UNet (fp16 -> fp32) into `text` and
    `unet`; returns its training.json. Its tokenizers must be the ones this tree builds."""
    from safetensors.torch import load_file
    from transformers import CLIPTokenizer

    pipeline = Path(bundle_dir) / "pipeline"
    for folder, tokenizer in zip(("tokenizer", "tokenizer_2"), tokenizers, strict=True):
        if CLIPTokenizer.from_pretrained(pipeline / folder).get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"{bundle_dir}: its {folder} is not the one this recipe builds")
    for folder, encoder in (("text_encoder", text.encoder), ("text_encoder_2", text.encoder_2)):
        encoder.load_state_dict(load_file(pipeline / folder / "model.safetensors"))
    unet.load_state_dict(load_file(pipeline / "unet" / "diffusion_pytorch_model.safetensors"))
    return json.loads((Path(bundle_dir) / "training.json").read_text())


def pastel_saturation(vae, per_category: int) -> dict[str, float]:
    """Saturation of real pastel renders and of the VAE's reconstructions of them (a decoder that
    cannot draw the style re-saturates it)."""
    from generative_service.training import shapes
    from generative_service.training import shapes_model as M

    real = shapes.real_images(shapes.eval_specs(per_category // 6 or 1), pastel=True)
    recon = M.reconstruct(vae, M.to_pixels(real))
    return {"real": shapes.saturation(real), "reconstructed": shapes.saturation(recon)}


def _ceiling_count(budget: str) -> int:
    return 8 if budget == "quick" else 60


def pixels_uint8(pixels):
    """(N, 3, 64, 64) [-1, 1] tensor -> (N, 64, 64, 3) uint8 array."""
    return ((pixels + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def reconstruction_accuracy(vae, per_category: int) -> dict[str, float]:
    """The judge on VAE reconstructions of real renders of the evaluation prompts: how much of
    every category the autoencoder lets through (no model can score above it)."""
    from generative_service.training import shapes
    from generative_service.training import shapes_model as M

    specs = shapes.eval_specs(per_category)
    recon = M.reconstruct(vae, M.to_pixels(shapes.real_images(specs)))
    return shapes.accuracy_by_category(specs, recon)
