"""Writing the demo bundle (the layout in `engine.paths`) and its model card.

Weights are stored in fp16 safetensors (half the size; the engine upcasts on CPU). The bundle is
written into a staging directory next to the target and swapped in at the end, so an
interrupted run never leaves a half-written default model behind.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch

LORA_NAME = "bold"
DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 5.0


def save_bundle(
    target: Path,
    *,
    pipe,
    controlnet,
    lora_state: dict[str, torch.Tensor],
    lora_config: dict,
    info: dict[str, Any],
    lora_name: str = LORA_NAME,
) -> Path:
    """Write pipeline/, controlnet-canny/, loras/LORA_NAME.safetensors and bundle.json to `target`.

    `pipe` must not carry the LoRA (it is saved separately); its modules are cast to fp16.
    """
    from diffusers import StableDiffusionXLPipeline
    from diffusers.utils import logging as diffusers_logging

    target = Path(target)
    staging = target.parent / f".{target.name}.staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # These models list no modules to keep in fp32, so diffusers' warning about casting with
    # .to() (printed with an empty list) says nothing here; it is silenced for these calls only.
    verbosity = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.to(torch.float16).save_pretrained(staging / "pipeline", safe_serialization=True)
        controlnet.to(torch.float16).save_pretrained(
            staging / "controlnet-canny", safe_serialization=True
        )
    finally:
        diffusers_logging.set_verbosity(verbosity)
    (staging / "loras").mkdir()
    StableDiffusionXLPipeline.save_lora_weights(
        staging / "loras",
        unet_lora_layers={k: v.to(torch.float16) for k, v in lora_state.items()},
        weight_name=f"{lora_name}.safetensors",
        unet_lora_adapter_metadata=lora_config,
    )
    (staging / "bundle.json").write_text(json.dumps(info, indent=2) + "\n")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


def bundle_info(*, budget: str) -> dict[str, Any]:
    """bundle.json: what the engine and the gateway read (size, steps, hint) plus the defaults we measured."""
    return {
        "name": "demo",
        "default_size": 64,
        "default_steps": DEFAULT_STEPS,
        "default_guidance": DEFAULT_GUIDANCE,
        "default_sampler": "dpmpp_2m_karras",
        "prompt_hint": 'a digit 0-9, e.g. "7", "the digit seven", "a handwritten seven"; LoRA "bold" thickens strokes; canny control steers the shape',
        "loras": [LORA_NAME],
        "budget": budget,
    }


def bundle_bytes(root: Path) -> int:
    """Total size of the files in a bundle."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


def write_card(root: Path, *, report: dict[str, Any]) -> None:
    """MODEL_CARD.md and evaluation.json from the training/evaluation report."""
    root = Path(root)
    (root / "evaluation.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (root / "MODEL_CARD.md").write_text(render_card(report))


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f} %"


def _stage_rows(report: dict[str, Any]) -> str:
    rows = []
    for stage in report["stages"]:
        cfg = report["config"][stage["name"]]
        rows.append(
            f"| {stage['name']} | {stage['steps']} | {cfg['batch_size']} | {cfg['lr']:g} | {cfg['ema_decay'] or '-'} | {stage['seconds'] / 60:.1f} min | {stage['final_loss']:.4f} |"
        )
    return "\n".join(rows)


def _eval_lines(ev: dict[str, Any]) -> str:
    if not ev:
        return "Not evaluated (run without `--no-eval`)."
    lines = [
        f"Judged by an RBF SVM trained on the {ev['judge_train_digits']} held-out real digits (its accuracy on the "
        f"generator's {ev['judge_test_digits']} training digits, which it never saw: {_pct(ev['judge_real_accuracy'])}).",
        f"Sampling: {ev['sampler']}, {ev['steps']} steps, 64x64, seeds {ev['seed_base']}+100*digit+i, drawn through the {ev['drawer']}.",
        "",
        "| measure | value |",
        "|---|---|",
    ]
    for guidance, acc in ev["accuracy_by_guidance"].items():
        lines.append(
            f"| prompted-digit accuracy, trained phrasings, guidance {guidance} ({ev['n_train_prompts']} images) | {_pct(acc)} |"
        )
    lines.append(
        f"| prompted-digit accuracy, unseen phrasings, guidance {ev['guidance']} ({ev['n_heldout_prompts']} images) | {_pct(ev['heldout_accuracy'])} |"
    )
    lines.append(
        f"| Fréchet distance to real digits (judge features), guidance {ev['guidance']} | {ev['frechet']:.2f} |"
    )
    cn = ev["controlnet"]
    lines.append(
        f"| ControlNet: edge F1 vs control (1 px), with / without control | {cn['edge_f1_on']:.3f} / {cn['edge_f1_off']:.3f} |"
    )
    lines.append(
        f"| ControlNet: generic prompt, judge reads the control's digit | {_pct(cn['steer_accuracy'])} |"
    )
    lo = ev["lora"]
    lines.append(
        f"| LoRA `bold`: ink fraction on / off (real digits {lo['ink_real']:.3f}, bold targets {lo['ink_bold_real']:.3f}) | {lo['ink_on']:.3f} / {lo['ink_off']:.3f} |"
    )
    lines.append(
        f"| LoRA `bold`: prompted-digit accuracy with the adapter | {_pct(lo['accuracy_on'])} |"
    )
    lines.append(
        f"| LoRA `bold` removed: images equal the base model's exactly | {lo['off_exact']} |"
    )
    return "\n".join(lines)


def render_card(report: dict[str, Any]) -> str:
    """The model card text."""
    ev = report.get("evaluation", {})
    return f"""# demo: a small SDXL-architecture model trained on handwritten digits

The embedded default model of the service (`GENSVC_MODEL=demo`). It draws the digit a prompt asks
for ("7", "the digit seven", "a handwritten seven", "number 7", ...) at 64x64 in well under a
second on a CPU. It is trained from scratch by the project itself:
`gensvc models train-demo --budget {report["budget"]}`: {report["train_minutes"]:.1f} min of training and
{report["eval_minutes"]:.1f} min of evaluation (wall-clock) on {report["machine"]}, a 2-core machine shared with other
work, so the times are upper bounds.
Step budgets, not the clock, define the model: a retrain gives the same weights with the same machine and thread
count (bit-exact in the tests, on the quick budget), and the same evaluation numbers within noise elsewhere.

## Architecture (real diffusers/transformers classes, loaded with `from_pretrained`)
- UNet2DConditionModel, SDXL `text_time` addition embedding, channels (64, 128), 1 layer per block, cross-attention at 4x4: {report["params"]["unet"] / 1e6:.2f} M parameters.
- AutoencoderKL, channels (8, 16, 32, 64), scale factor 8, 4 latent channels: {report["params"]["vae"] / 1e6:.2f} M; scaling_factor measured as {report["scaling_factor"]:.4f}.
- CLIPTextModel + CLIPTextModelWithProjection (width 64, 2 layers), random and frozen; byte-level BPE tokenizers whose merges are learned from the training prompts.
- ControlNet (canny), from the trained UNet: {report["params"]["controlnet"] / 1e6:.2f} M. LoRA `bold`: rank {report["lora_rank"]}, {report["params"]["lora"] / 1e3:.0f} k parameters.
- Stored in fp16 safetensors, {report["bundle_mb"]:.1f} MB in all.

## Data
scikit-learn's `load_digits` (UCI Optical Recognition of Handwritten Digits, 1797 8x8 images, CC BY 4.0), rendered at 64 px
(bicubic + contrast curve), dark ink on white. A fixed stratified split (seed 0) keeps {report["judge_digits"]} digits out
of training for the evaluation judge; the generator trains on the other {report["train_digits"]}.
Prompts: {report["n_train_templates"]} phrasings per digit (e.g. {report["example_prompts"]}) plus
{report["n_generic"]} class-free prompts ("a handwritten digit"). {report["n_heldout_templates"]} further phrasings (e.g. {report["example_heldout"]}) are never trained on and measured separately.
ControlNet conditions on OpenCV Canny edges (100/200, the API default) of the training images; the LoRA trains on the same
digits with strokes thickened by a 5x5 grey dilation.

## Recipe
DDPM scaled_linear noise (SDXL's betas), epsilon prediction, min-SNR-5 loss weighting, AdamW (weight decay 0.01) with
warm-up and cosine decay, gradient clipping 1.0, EMA 0.999 (with warm-up) for the UNet. Classifier-free guidance
dropout sets the text embeddings (sequence and pooled) to ZERO, as the pipeline does for an empty negative prompt with
`force_zeros_for_empty_prompt=True`. The VAE trains with L1 + 1e-6 KL on base and bold digits. Seeds: modules 0-6, every
step's randomness from seed (stage seed, step), so a resumed run equals an uninterrupted one. `torch.set_num_threads(2)`,
`OMP_WAIT_POLICY=PASSIVE` (spinning OpenMP threads made steps up to 10x slower on the shared CPU).
The ControlNet starts from the trained UNet (zero output convolutions; the condition encoder's last layer small and
random rather than zero, so gradients reach it from the first step) and weights steps with SNR < 1 by 1/SNR (capped at
50): with the plain min-SNR loss it had learned nothing after 800 steps. The LoRA (rank 8 on the attention,
feed-forward, projection and ResNet convolution layers) trains on a frozen copy of the UNet.

| stage | steps | batch | lr | EMA | time | final loss |
|---|---|---|---|---|---|---|
{_stage_rows(report)}

## Evaluation
{_eval_lines(ev)}

## Limits
- Only 64x64: other sizes change SDXL's `add_time_ids` and are out of distribution.
- The text encoders are random and frozen: phrasings far from the trained ones may draw the wrong digit (see unseen phrasings above).
- It knows digits only; any other prompt gives some digit.

Licence: Apache-2.0 (the project's); training data CC BY 4.0 (UCI / scikit-learn).
"""
