"""`gensvc models train-demo`: train the embedded demo model (the shapes world, issue #19), or the
earlier digits model.

    gensvc models train-demo [--budget quick|short|full] [--resume] [--eval-only] [--out DIR] ...
    gensvc models train-demo --world digits [--out DIR] [--budget quick|full] [--resume] [--no-eval]
    python -m generative_service.training.demo ...

`--world shapes` (the default) is `training/shapes_demo.py`; it writes the embedded bundle
(`generative_service/models/demo`, what GENSVC_MODEL=demo serves) unless `--out` is given.
`--world digits` is the recipe of the earlier default, kept as a recipe: it writes
CACHE_DIR/demo-digits unless `--out` is given, and nothing serves it by default. Digits stages: VAE
-> (measure the latent scaling factor) -> UNet -> canny ControlNet -> `bold` LoRA, then the bundle
(fp16 safetensors), evaluated through the engine and described in MODEL_CARD.md. Budgets are step
counts, not wall-clock time, so a retrain reproduces the model. Checkpoints go to `--work`
(default CACHE_DIR/train-demo/BUDGET, shapes: CACHE_DIR/train-demo/shapes-BUDGET); `--resume`
continues there.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path

BUDGETS = ("quick", "full")


def stage_configs(budget: str) -> dict:
    """Hyperparameters of every stage for a budget (`quick`: seconds, for CI; `full`: the committed model)."""
    from generative_service.training.loop import StageConfig

    if budget == "quick":
        return {
            "vae": StageConfig("vae", steps=4, batch_size=8, seed=11, checkpoint_every=2),
            "unet": StageConfig(
                "unet", steps=4, batch_size=8, ema_decay=0.999, seed=12, checkpoint_every=2
            ),
            "controlnet": StageConfig("controlnet", steps=2, batch_size=4, seed=13),
            "lora": StageConfig("lora", steps=2, batch_size=4, seed=14),
        }
    return {
        "vae": StageConfig("vae", steps=1000, batch_size=32, lr=2e-3, warmup_steps=50, seed=11),
        "unet": StageConfig(
            "unet", steps=3000, batch_size=128, warmup_steps=100, ema_decay=0.999, seed=12
        ),
        "controlnet": StageConfig(
            "controlnet", steps=800, batch_size=64, lr=2e-3, warmup_steps=40, seed=13
        ),
        "lora": StageConfig("lora", steps=400, batch_size=64, warmup_steps=20, seed=14),
    }


def eval_sizes(budget: str) -> dict:
    """How many images the evaluation draws."""
    if budget == "quick":
        return {"per_digit": 1, "heldout_per_digit": 1, "control_per_digit": 1}
    return {"per_digit": 10, "heldout_per_digit": 6, "control_per_digit": 3}


def _parser() -> argparse.ArgumentParser:
    from generative_service.engine.paths import DEMO_ROOT

    parser = argparse.ArgumentParser(
        prog="gensvc models train-demo", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"bundle directory to write (default: {DEMO_ROOT}, the embedded model; "
        "digits: CACHE_DIR/demo-digits)",
    )
    parser.add_argument(
        "--budget",
        choices=(*BUDGETS, "short"),
        default="full",
        help="step budget: quick (seconds, smoke test), full (the committed model); "
        "shapes also: short (what a loaded 2-core CPU trains in ~1 h)",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the checkpoints in the work directory"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="checkpoint directory (default: CACHE_DIR/train-demo/BUDGET)",
    )
    parser.add_argument(
        "--no-eval", action="store_true", help="skip the evaluation (the model card says so)"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--eval-only",
        action="store_true",
        help="shapes: only measure the bundle at --out and rewrite its card",
    )
    parser.add_argument(
        "--per-category",
        type=int,
        default=None,
        help="shapes: evaluation prompts per category (default by budget: quick 1, short 20, full 100)",
    )
    parser.add_argument(
        "--stop-after",
        choices=("vae", "decoder", "unet"),
        default=None,
        help="shapes: train up to this stage only (resume later with --resume)",
    )
    parser.add_argument(
        "--vae-from",
        type=Path,
        default=None,
        help="shapes: a bundle of this recipe (e.g. the embedded model's folder) whose VAE "
        "stands for the VAE stage (~25 min saved when only the later stages change); the "
        "decoder fine-tune runs again from its decoder",
    )
    parser.add_argument(
        "--unet-from",
        type=Path,
        default=None,
        help="shapes: a bundle of this recipe whose text encoders and UNet stand for the text "
        "and UNet stages; the UNet trains on for --unet-steps more (on this tree's prompt "
        "mixture) and the ControlNet and LoRA are trained again; implies --vae-from it",
    )
    parser.add_argument(
        "--unet-steps",
        type=int,
        default=None,
        help="shapes, with --unet-from: more UNet steps (default a third of the budget's UNet "
        "stage: 800 on full)",
    )
    parser.add_argument(
        "--world",
        choices=("digits", "shapes"),
        default="shapes",
        help="training world: shapes (the embedded default model) or digits (the earlier "
        "default, a recipe only: writes CACHE_DIR/demo-digits unless --out is given)",
    )
    return parser


def default_out(world: str, cache: Path) -> Path:
    """Where a world's bundle goes without `--out`: shapes is the embedded model (what
    GENSVC_MODEL=demo serves), digits a bundle in the cache that nothing serves by default."""
    from generative_service.engine.paths import DEMO_ROOT

    return DEMO_ROOT if world == "shapes" else cache / "demo-digits"


def main(argv: list[str] | None = None) -> int:
    """Run the trainer; returns the process exit code."""
    args = _parser().parse_args(argv)
    # NOTE: before torch loads its OpenMP runtime: on a CPU shared with other work, spinning OpenMP
    # threads made each training step up to 10x slower.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from generative_service.settings import get_settings
    from generative_service.training.loop import StageMismatch

    torch.set_num_threads(
        2
    )  # NOTE: one training job at a time; more threads only fight on a shared CPU
    cache = Path(get_settings().cache_dir)
    if args.world == "shapes":
        return _main_shapes(args, cache)
    if args.budget not in BUDGETS:
        print(f"error: --budget {args.budget} is a shapes-world budget", file=sys.stderr)
        return 2
    args.out = args.out or default_out("digits", cache)
    work = args.work or cache / "train-demo" / args.budget
    try:
        report = train(
            args.out,
            budget=args.budget,
            work=work,
            resume=args.resume,
            evaluate=not args.no_eval,
            progress=not args.no_progress,
        )
    except StageMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    ev = report.get("evaluation", {})
    print(
        f"wrote {args.out} ({report['bundle_mb']:.1f} MB): {report['train_minutes']:.1f} min of training, "
        f"this run {report['run_minutes']:.1f} min"
    )
    if ev:
        print(
            f"prompted-digit accuracy {ev['accuracy_by_guidance']} (unseen phrasings: {ev['heldout_accuracy']:.3f})"
        )
    return 0


def _main_shapes(args, cache: Path) -> int:
    from generative_service.training import shapes_demo
    from generative_service.training.loop import StageMismatch

    out = args.out or default_out("shapes", cache)
    work = args.work or cache / "train-demo" / f"shapes-{args.budget}"
    if args.eval_only:
        ev = shapes_demo.evaluate_only(out, per_category=args.per_category)["evaluation"]
        print(
            f"{out}: accuracy by category {ev['accuracy']} (judge on real renders {ev['judge_on_real']})"
        )
        return 0
    try:
        report = shapes_demo.train(
            out,
            budget=args.budget,
            work=work,
            resume=args.resume,
            evaluate=not args.no_eval,
            progress=not args.no_progress,
            eval_per_category=args.per_category,
            stop_after=args.stop_after,
            vae_from=args.vae_from,
            unet_from=args.unet_from,
            unet_steps=args.unet_steps,
        )
    except StageMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "stopped_after" in report:
        print(f"stopped after {report['stopped_after']}: VAE ceiling {report['vae_ceiling']}")
        return 0
    print(
        f"wrote {out} ({report['bundle_mb']:.1f} MB): {report['train_minutes']:.1f} min of training, "
        f"this run {report['run_minutes']:.1f} min"
    )
    ev = report.get("evaluation")
    if ev:
        print(f"accuracy by category: {ev['accuracy']}")
    return 0


def train(
    out: Path,
    *,
    budget: str,
    work: Path,
    resume: bool,
    evaluate: bool = True,
    progress: bool = True,
) -> dict:
    """Train every stage, write the bundle to `out`, evaluate it, write the card; returns the report."""
    import torch

    from generative_service.training import bundle, components, data, stages
    from generative_service.training.loop import run_stage

    began = time.monotonic()
    configs = stage_configs(budget)
    train_set, judge_set = data.load_digits_split()
    base_px = torch.from_numpy(data.to_pixels(train_set.images))
    bold_px = torch.from_numpy(data.to_pixels(data.bold(train_set.images)))
    labels = torch.from_numpy(train_set.labels)

    # 1. Frozen text side and the modules to train.
    tokenizers = components.build_tokenizers(data.training_corpus())
    text_encoders = components.build_text_encoders(*tokenizers)
    vae, unet = components.build_vae(), components.build_unet()
    pipe = components.assemble_pipeline(
        vae=vae, unet=unet, tokenizers=tokenizers, text_encoders=text_encoders
    )
    table = stages.prompt_table(pipe)
    results = []

    # 2. VAE on base and bold digits, then the latent scaling factor.
    vae_loss = stages.vae_loss(
        vae, torch.cat([base_px, bold_px]), batch_size=configs["vae"].batch_size
    )
    results.append(
        run_stage(configs["vae"], vae, vae_loss, work_dir=work, resume=resume, progress=progress)
    )
    vae.requires_grad_(False)
    base_mean, base_std = stages.encode_latents(vae, base_px)
    bold_mean, bold_std = stages.encode_latents(vae, bold_px)
    scale = stages.measure_scaling_factor(base_mean, base_std)
    vae.register_to_config(scaling_factor=scale)
    latents = stages.Latents(base_mean, base_std, scale)
    bold_latents = stages.Latents(bold_mean, bold_std, scale)

    # 3. UNet (text-to-image).
    scheduler = components.noise_scheduler()
    loss = stages.unet_loss(
        unet, scheduler, latents, labels, table, batch_size=configs["unet"].batch_size
    )
    results.append(
        run_stage(configs["unet"], unet, loss, work_dir=work, resume=resume, progress=progress)
    )
    unet.requires_grad_(False)

    # 4. Canny ControlNet over the frozen UNet.
    controlnet = components.build_controlnet(unet)
    edges = stages.edge_tensor(train_set.images)
    loss = stages.controlnet_loss(
        controlnet,
        unet,
        scheduler,
        latents,
        labels,
        edges,
        table,
        batch_size=configs["controlnet"].batch_size,
    )
    results.append(
        run_stage(
            configs["controlnet"], controlnet, loss, work_dir=work, resume=resume, progress=progress
        )
    )

    # 5. Style LoRA (bold strokes) on the frozen UNet.
    lora_state, lora_config = _train_lora(
        unet,
        scheduler,
        bold_latents,
        labels,
        table,
        configs["lora"],
        work=work,
        resume=resume,
        progress=progress,
        results=results,
    )

    # 6. Bundle, evaluation through the engine, model card.
    params = {
        "unet": components.count_params(unet),
        "vae": components.count_params(vae),
        "controlnet": components.count_params(controlnet),
        "lora": sum(t.numel() for t in lora_state.values()),
    }
    bundle.save_bundle(
        out,
        pipe=pipe,
        controlnet=controlnet,
        lora_state=lora_state,
        lora_config=lora_config,
        info=bundle.bundle_info(budget=budget),
    )
    report = _report(
        budget,
        configs,
        results,
        params=params,
        scale=scale,
        lora_rank=lora_config["r"],
        train_digits=len(labels),
        judge_digits=len(judge_set.labels),
    )
    eval_began = time.monotonic()
    if evaluate:
        report["evaluation"] = _evaluate(out, budget)
    # Stage times come from the checkpoints, so they add up across resumed runs.
    report["train_minutes"] = sum(r.seconds for r in results) / 60
    report["eval_minutes"] = (time.monotonic() - eval_began) / 60
    report["run_minutes"] = (time.monotonic() - began) / 60
    report["bundle_mb"] = bundle.bundle_bytes(out) / 1e6
    bundle.write_card(out, report=report)
    return report


def _train_lora(
    unet, scheduler, bold_latents, labels, table, config, *, work, resume, progress, results
):
    """Train the `bold` adapter on a copy of `unet`; returns its state dict (peft keys) and LoRA config."""
    import copy

    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from generative_service.training import bundle, components, stages
    from generative_service.training.loop import run_stage

    rank = 8
    lora_config = LoraConfig(r=rank, lora_alpha=rank, target_modules=components.LORA_TARGETS)
    # NOTE: a copy, because peft wraps the layers it targets and the saved base UNet must stay plain.
    lora_unet = copy.deepcopy(unet)
    torch.manual_seed(6)  # peft draws the LoRA A matrices from the global generator
    lora_unet.add_adapter(lora_config, adapter_name=bundle.LORA_NAME)
    loss = stages.unet_loss(
        lora_unet, scheduler, bold_latents, labels, table, batch_size=config.batch_size
    )
    results.append(
        run_stage(config, lora_unet, loss, work_dir=work, resume=resume, progress=progress)
    )
    state = {
        k: v.detach().clone()
        for k, v in get_peft_model_state_dict(lora_unet, adapter_name=bundle.LORA_NAME).items()
    }
    return state, lora_config.to_dict()


def _evaluate(out: Path, budget: str) -> dict:
    from generative_service.training import data, drawing, evaluate

    drawer = drawing.EngineDrawer(out)
    judge = evaluate.train_judge()
    report = evaluate.evaluate_bundle(drawer, judge, **eval_sizes(budget))
    report["drawer"] = "service Engine"
    train_set, judge_set = data.load_digits_split()
    report["judge_train_digits"], report["judge_test_digits"] = (
        len(judge_set.labels),
        len(train_set.labels),
    )
    return report


def _report(budget: str, configs: dict, results: list, **facts) -> dict:
    from generative_service.training import data

    return {
        "budget": budget,
        "machine": f"{platform.machine()} CPU, 2 torch threads",
        "config": {name: asdict(cfg) for name, cfg in configs.items()},
        "stages": [asdict(r) for r in results],
        "n_train_templates": len(data.TRAIN_TEMPLATES),
        "n_heldout_templates": len(data.HELDOUT_TEMPLATES),
        "n_generic": len(data.GENERIC_PROMPTS),
        "example_prompts": ", ".join(f'"{data.phrase(t, 7)}"' for t in data.TRAIN_TEMPLATES[:6]),
        "example_heldout": ", ".join(f'"{data.phrase(t, 7)}"' for t in data.HELDOUT_TEMPLATES[:3]),
        "scaling_factor": facts.pop("scale"),
        **facts,
    }


if __name__ == "__main__":
    sys.exit(main())
