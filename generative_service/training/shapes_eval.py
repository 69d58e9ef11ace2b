"""Measuring a shapes-world bundle through the service's Engine, GenEval style (issue #19).

Every number comes from images drawn on the users' path (`drawing.EngineDrawer`: the Engine's
schedulers, prompt encoding, LoRA manager and Canny preprocessing) and read back by the exact
judge of `shapes` (which scores 100 % on real renders of the same prompts; that figure is
reported beside the model's). `benchmarks/quality.py` and `gensvc models train-demo --eval-only`
print the same report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from generative_service.training import shapes as S

STEPS = 20
SAMPLER = "dpmpp_2m_karras"
GUIDANCES = (1.5, 3.0, 5.0, 7.5)
GRID_PROMPTS = (
    "a red circle above a blue square",
    "a green triangle to the left of a yellow circle",
    "two blue squares",
    "a yellow triangle",
    "a red square on the right",
    "a blue circle and a green square",
)


def per_category_for(budget: str) -> int:
    """Prompts per category the trainer's own evaluation draws."""
    return {"quick": 1, "short": 20, "full": 100}.get(budget, 20)


def edge_f1(images: np.ndarray, control_edges: np.ndarray, *, tolerance: int = 1) -> float:
    """Mean F1 between each (RGB) image's Canny edges and its control edges, within `tolerance` px."""
    from generative_service.training.evaluate import edge_f1_of

    return edge_f1_of(S.canny_edges(images), control_edges, tolerance=tolerance)


def placed_like(image: np.ndarray, reference: np.ndarray, *, tolerance: float = 6.0) -> bool:
    """The judge finds as many objects in `image` as in `reference`, each within `tolerance` px
    of a reference object's centroid (the control's shapes are where the control put them)."""
    found, wanted = S.detect(image), S.detect(reference)
    if len(found) != len(wanted):
        return False
    left = list(found)
    for w in wanted:
        near = [f for f in left if np.hypot(f.cx - w.cx, f.cy - w.cy) <= tolerance]
        if not near:
            return False
        left.remove(near[0])
    return True


def evaluate_bundle(
    model: str | Path,
    *,
    per_category: int,
    guidance: float | None = None,
    ablation_per_category: int | None = None,
    extras: int | None = None,
) -> dict:
    """Every number of the model card for the bundle at `model` (a path or "demo")."""
    from generative_service.training.drawing import EngineDrawer

    drawer = EngineDrawer(model)
    root = drawer.engine_root
    if root is None:
        raise ValueError(f"{model} is not a local bundle")
    info = json.loads((root / "bundle.json").read_text())
    guidance = guidance if guidance is not None else float(info["default_guidance"])
    lora = info["loras"][0]
    extras = extras if extras is not None else max(2, per_category // 2)
    ablation_per_category = ablation_per_category or max(1, per_category // 4)
    common: dict[str, Any] = {"steps": STEPS, "sampler": SAMPLER, "rgb": True}

    specs = S.eval_specs(per_category)
    prompts, seeds = [s.prompt for s in specs], [s.seed for s in specs]
    began = time.monotonic()
    images = drawer.draw(prompts, seeds, guidance=guidance, **common)
    seconds = time.monotonic() - began
    report: dict = {
        "guidance": guidance,
        "steps": STEPS,
        "sampler": SAMPLER,
        "per_category": per_category,
        "accuracy": S.accuracy_by_category(specs, images),
        "judge_on_real": S.judge_real_accuracy(specs),
        **S.frechet_to_real(specs, images),
        "images_per_second": len(specs) / seconds,
        "drawer": "service Engine (fp32, CPU)",
    }

    ablation_specs = S.eval_specs(ablation_per_category, seed_base=30_000)
    report["guidance_ablation"] = {}
    for g in GUIDANCES:
        drawn = drawer.draw(
            [s.prompt for s in ablation_specs],
            [s.seed for s in ablation_specs],
            guidance=g,
            **common,
        )
        report["guidance_ablation"][str(g)] = S.accuracy_by_category(ablation_specs, drawn)
    report["ablation_per_category"] = ablation_per_category

    report["negative"] = evaluate_negative(drawer, extras, guidance=guidance, **common)
    report["controlnet"] = evaluate_controlnet(drawer, extras, guidance=guidance, **common)
    report["lora"] = evaluate_lora(drawer, extras, lora, guidance=guidance, **common)
    report["grid"] = write_grid(drawer, root / "grid.png", guidance=guidance)
    return report


def evaluate_negative(drawer, count: int, *, guidance: float, **common) -> dict:
    """`a {c} {s}` with negative prompt `{c}`: how often no object of colour c is drawn, and how
    often a {s} of another colour is (the prompt's shape kept, its colour refused)."""
    rng = np.random.default_rng(40_000)
    asks = [(S.COLOURS[rng.integers(4)], S.SHAPES[rng.integers(3)]) for _ in range(count)]
    seeds = [40_000 + i for i in range(count)]
    drawn = drawer.draw(
        [f"a {c} {s}" for c, s in asks],
        seeds,
        guidance=guidance,
        negative_prompts=[c for c, _ in asks],
        **common,
    )
    no_colour, kept_shape = [], []
    for (colour, shape), image in zip(asks, drawn, strict=True):
        found = S.detect(image)
        no_colour.append(all(f.colour != colour for f in found))
        kept_shape.append(any(f.shape == shape and f.colour != colour for f in found))
    return {
        "n": count,
        "without_negative_colour": float(np.mean(no_colour)),
        "other_colour_same_shape": float(np.mean(kept_shape)),
    }


def evaluate_controlnet(
    drawer, count: int, *, guidance: float, conditioning_scale: float = 1.0, **common
) -> dict:
    """Canny control from real renders of unseen scenes, with a generic prompt: edge F1 with
    and without the control, and how often the shapes land where the control put them."""
    specs = [
        S.random_spec(("single", "two_objects")[i % 2], np.random.default_rng(50_000 + i))
        for i in range(count)
    ]
    controls = S.real_images(specs, seed_offset=60_000)
    edges = S.canny_edges(controls)
    prompts = [S.GENERIC_PROMPTS[0]] * count
    seeds = [50_000 + i for i in range(count)]
    on = drawer.draw(
        prompts, seeds, guidance=guidance, controls=controls,
        conditioning_scale=conditioning_scale, **common,
    )  # fmt: skip
    off = drawer.draw(prompts, seeds, guidance=guidance, **common)
    return {
        "n": count,
        "conditioning_scale": conditioning_scale,
        "edge_f1_on": edge_f1(on, edges),
        "edge_f1_off": edge_f1(off, edges),
        "placed_on": float(np.mean([placed_like(a, b) for a, b in zip(on, controls, strict=True)])),
        "placed_off": float(
            np.mean([placed_like(a, b) for a, b in zip(off, controls, strict=True)])
        ),
    }


def evaluate_lora(drawer, count: int, name: str, *, guidance: float, **common) -> dict:
    """Saturation with the pastel LoRA on and off (real pastel renders beside), accuracy with
    it on, and whether the base is exact again once it is removed."""
    specs = S.eval_specs(max(1, count // len(S.CATEGORIES)), seed_base=70_000)
    prompts, seeds = [s.prompt for s in specs], [s.seed for s in specs]
    base = drawer.draw(prompts, seeds, guidance=guidance, **common)
    on = drawer.draw(prompts, seeds, guidance=guidance, loras={name: 1.0}, **common)
    off = drawer.draw(prompts, seeds, guidance=guidance, **common)
    return {
        "name": name,
        "n": len(specs),
        "saturation_off": S.saturation(base),
        "saturation_on": S.saturation(on),
        "saturation_real": S.saturation(S.real_images(specs)),
        "saturation_real_pastel": S.saturation(S.real_images(specs, pastel=True)),
        "accuracy_on": S.accuracy_by_category(specs, on)["overall"],
        "off_exact": bool(np.array_equal(base, off)),
    }


def write_grid(drawer, path: Path, *, guidance: float, seeds: int = 4) -> str:
    """A grid image: one row per prompt of GRID_PROMPTS, `seeds` seeds each, prompt on the left."""
    from PIL import Image, ImageDraw

    prompts = [p for p in GRID_PROMPTS for _ in range(seeds)]
    images = drawer.draw(
        prompts,
        [1 + i % seeds for i in range(len(prompts))],
        guidance=guidance,
        steps=STEPS,
        sampler=SAMPLER,
        rgb=True,
    )
    cell, label = 2 * S.IMAGE_SIZE, 280
    grid = Image.new("RGB", (label + seeds * cell, len(GRID_PROMPTS) * cell), "white")
    draw = ImageDraw.Draw(grid)
    for row, prompt in enumerate(GRID_PROMPTS):
        draw.text((6, row * cell + cell // 2 - 6), prompt, fill="black")
        for col in range(seeds):
            tile = Image.fromarray(images[row * seeds + col]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label + col * cell, row * cell))
    grid.save(path)
    return path.name


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def card_table(ev: dict) -> str:
    """The per-category table: the model beside the judge on real renders."""
    rows = ["| category | model | judge on real renders |", "|---|---:|---:|"]
    for category in (*S.CATEGORIES, "overall"):
        rows.append(
            f"| {category.replace('_', ' ')} | {_pct(ev['accuracy'][category])} | {_pct(ev['judge_on_real'][category])} |"
        )
    return "\n".join(rows)


def write_card(root: Path, report: dict) -> None:
    """MODEL_CARD.md and evaluation.json for a shapes bundle."""
    root = Path(root)
    (root / "evaluation.json").write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    (root / "MODEL_CARD.md").write_text(render_card(report))


def _text_sentence(report: dict) -> str:
    if "text_layout_accuracy" not in report:
        return "trained with the UNet."
    which = report.get("text_pretrained", ["first", "second"])
    read = f"({_pct(report['text_layout_accuracy'])} of the {report['phrasings']} phrasings read back exactly)"
    layout = (
        "to name each prompt's layout (every object's colour, shape and side, and the count) "
        "from the states after the end-of-text token and the pooled embedding"
    )
    if "first" in which:
        return f"both pretrained {layout} {read}, then frozen."
    return (
        f"the first stays random and frozen (every word's state distinct, so cross-attention "
        f"can find a colour next to its shape); the second is pretrained {layout} {read}, then frozen."
    )


def _lineage_notes(report: dict) -> list[str]:
    notes = []
    if report.get("vae_from"):
        notes.append(
            f"The VAE stage is that of an earlier run of this recipe (`--vae-from {report['vae_from']}`, the "
            "bundle there at the time: same seeds and steps; its minutes are in the table); the decoder "
            "fine-tune ran again from its decoder."
        )
    if report.get("unet_from"):
        more = [st["steps"] for st in report["stages"] if st["name"] == "unet_more"]
        rounds = (
            f" ({' + '.join(map(str, more))}, one `unet_more` row per run)" if len(more) > 1 else ""
        )
        notes.append(
            f"The text encoders and the UNet are those of an earlier run of this recipe (`--unet-from "
            f"{report['unet_from']}`, the bundle there at the time; their stages are the `text` and `unet` "
            f"rows), and the UNet trained {sum(more)} more steps{rounds} on this tree's prompt mixture; "
            "the ControlNet and the LoRA were trained again over the UNet that came out."
        )
    pastel = report.get("pastel_reconstruction_saturation")
    if pastel:
        notes.append(
            f"The decoder fine-tune sees the `pastel` scenes too (a quarter of each batch): reconstructions of "
            f"real pastel renders have saturation {pastel['reconstructed']:.3f} (real {pastel['real']:.3f}); a decoder "
            "trained without them re-saturated pastel (0.73), so no LoRA could draw it."
        )
    return ["", *notes] if notes else []


def _negation_note(neg: dict, plain: dict | None) -> str:
    """How the negative prompts were applied, and plain CFG's figure beside it when measured."""
    if not neg.get("negative_guidance"):
        return " (plain classifier-free guidance)"
    note = f" (composable negation at {neg['negative_guidance']:g} x guidance, the bundle's `negative_guidance`"
    if plain:
        note += f"; plain classifier-free guidance: {_pct(plain['without_negative_colour'])}"
    return note + ")"


def render_card(report: dict) -> str:
    """The model card text of a shapes bundle."""
    ev = report.get("evaluation")

    def row(st: dict) -> str:
        config = st.get("config") or report["config"][st["name"]]
        return (
            f"| {st['name']} | {st['steps']} | {config['batch_size']} | {config['lr']:g} | "
            f"{st['seconds'] / 60:.1f} min | {st['final_loss']:.4f} |"
        )

    stages = "\n".join(row(st) for st in report["stages"])
    ceiling = report["vae_ceiling"]
    lines = [
        "# demo (shapes): a small SDXL-architecture model of flat coloured shapes",
        "",
        ("Trained by" if report.get("unet_from") else "Trained from scratch by")
        + f" `gensvc models train-demo --world shapes --budget {report['budget']}"
        + (f" --vae-from {report['vae_from']}" if report.get("vae_from") else "")
        + (f" --unet-from {report['unet_from']}" if report.get("unet_from") else "")
        + f"`: {report['train_minutes']:.1f} min of training on "
        f"{report['machine']} (a 2-core machine shared with other work; times are upper bounds).",
        "",
        "## Architecture",
        f"- UNet2DConditionModel (SDXL `text_time`), channels {tuple(report.get('unet_channels', (64, 128)))}, cross-attention at 8x8 and 4x4: {report['params']['unet'] / 1e6:.2f} M parameters.",
        f"- AutoencoderKL (8, 16, 32, 64), GroupNorm with one group, scale factor 8: {report['params']['vae'] / 1e6:.2f} M; scaling_factor {report['scaling_factor']:.4f}.",
        f"- CLIPTextModel + CLIPTextModelWithProjection (width 64, 3 layers): {report['params']['text_encoders'] / 1e6:.2f} M, "
        + _text_sentence(report),
        f"- Canny ControlNet {report['params']['controlnet'] / 1e6:.2f} M; LoRA `pastel` rank {report['lora_rank']}. {report['bundle_mb']:.1f} MB in fp16.",
        "",
        "## Data",
        f"{report['train_scenes']} procedural scenes of `generative_service/training/shapes.py` (one or two shapes, "
        f"{report['train_prompts']} distinct true prompts: every single, counting, two-object and relation phrasing).",
        "",
        "## Training",
        "| stage | steps | batch | lr | time | final loss |",
        "|---|---|---|---|---|---|",
        stages,
        "",
        f"VAE ceiling (the judge on reconstructions of real renders): after the VAE {_pct(ceiling['after_vae']['overall'])}, "
        f"after the decoder fine-tune {_pct(ceiling['after_decoder']['overall'])} "
        f"(per category: {', '.join(f'{k} {_pct(v)}' for k, v in ceiling['after_decoder'].items())}).",
        *_lineage_notes(report),
        "",
        "## Evaluation",
    ]
    if not ev:
        lines.append("Not evaluated.")
        return "\n".join(lines) + "\n"
    cn, lo, neg = ev["controlnet"], ev["lora"], ev["negative"]
    ablation = ", ".join(
        f"{g}: {_pct(acc['overall'])}" for g, acc in ev["guidance_ablation"].items()
    )
    lines += [
        f"{ev['per_category']} prompts per category, fixed seeds, {ev['steps']} steps {ev['sampler']}, guidance "
        f"{ev['guidance']}, drawn through the {ev['drawer']}; judged exactly (colour segmentation, "
        "connected components, contour fill, centroids).",
        "",
        card_table(ev),
        "",
        f"- Fréchet distance on judge features to real renders: {ev['frechet']:.2f} (real-vs-real floor {ev['frechet_real_floor']:.2f}).",
        f"- Guidance ablation, overall ({ev['ablation_per_category']} per category): {ablation}.",
        f"- Negative prompt `{{c}}` on `a {{c}} {{s}}` (n={neg['n']}): no {{c}} object {_pct(neg['without_negative_colour'])}, a {{s}} of another colour {_pct(neg['other_colour_same_shape'])}"
        + _negation_note(neg, ev.get("negative_plain_cfg"))
        + ".",
        f"- Canny ControlNet (n={cn['n']}, generic prompt): edge F1 {cn['edge_f1_on']:.3f} with / {cn['edge_f1_off']:.3f} without; shapes where the control put them {_pct(cn['placed_on'])} / {_pct(cn['placed_off'])}.",
        f"- LoRA `{lo['name']}` (n={lo['n']}): saturation {lo['saturation_on']:.3f} on / {lo['saturation_off']:.3f} off (real {lo['saturation_real']:.3f}, pastel real {lo['saturation_real_pastel']:.3f}); accuracy with it {_pct(lo['accuracy_on'])}; base exact after removal: {lo['off_exact']}.",
        f"- {ev['images_per_second']:.2f} images/s through the Engine on this CPU.",
        "",
        f"![prompts and results]({ev['grid']})",
    ]
    return "\n".join(lines) + "\n"
