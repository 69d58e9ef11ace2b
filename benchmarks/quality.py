"""Image-quality benchmark (numbers, not a test).

(a) A digits bundle (`--digits-model DIR`, from `gensvc models train-demo --world digits`; the
    embedded default until issue #19), drawn through the Engine: prompted-digit accuracy (judge:
    an SVM trained on held-out real digits) and Fréchet distance on the judge's features
    (generated vs the held-out real digits), for guidance 1, 3, 5, 7.5 (DPM++ 2M Karras) and for
    every sampler at the default guidance. 20 steps, 64x64, fixed seeds.
(a2) The demo model (shapes world, issue #19; `--shapes-model DIR` for another shapes bundle),
    through the Engine: GenEval-style accuracy per category (single, two objects, counting,
    colour attribution, position) read by the exact judge of `training/shapes.py` (its score on
    real renders of the same prompts beside), Fréchet distance on the judge's features vs real
    renders (with the real-vs-real floor) and images/s, for guidance 1.5, 3, 5, 7.5.
    `--per-category` prompts (default 100), fixed seeds, 20 steps DPM++ 2M Karras, 64x64.
(b) Real SDXL weights: FID and CLIP score on the fixed prompts in benchmarks/prompts.txt, with
    the metric models and reference images taken from local paths. Runs where such weights exist
    (`--sdxl-model`); without them the section says it was not run.

    .venv/bin/python benchmarks/quality.py [--per-category 100] [--no-report]
    .venv/bin/python benchmarks/quality.py --shapes-model DIR [--per-category 100]
    .venv/bin/python benchmarks/quality.py --skip-demo --digits-model DIR [--per-digit 10]
    .venv/bin/python benchmarks/quality.py --sdxl-model DIR --clip-model DIR --reference-dir DIR \\
        [--fid-model DIR] [--size 1024] [--steps 30] [--guidance 7.5]

Writes the "quality" section of benchmarks/REPORT.md ((a2): the "quality-shapes" section).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

REPORT = ROOT / "benchmarks" / "REPORT.md"
PROMPTS = ROOT / "benchmarks" / "prompts.txt"
GUIDANCES = (1.0, 3.0, 5.0, 7.5)
STEPS = 20
_HEADER = "# Benchmark report\n\nEach section is written by the script it names; rerun the script to refresh it.\n"


def write_section(key: str, body: str, *, report: Path = REPORT) -> None:
    """Replace (or append) the section between `<!-- section:KEY -->` markers of the report."""
    start, end = f"<!-- section:{key} -->", f"<!-- /section:{key} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    with open(Path(tempfile.gettempdir()) / "gensvc-bench-report.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = report.read_text() if report.exists() else _HEADER
        pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
        if pattern.search(text):
            text = pattern.sub(lambda _: block, text)
        else:
            text = text.rstrip() + "\n\n" + block + "\n"
        report.write_text(text)


# --- (a) a digits bundle ----------------------------------------------------------------------------


def _measure(drawer, judge, items, reference_features, *, guidance: float, sampler: str) -> dict:
    from generative_service.training import evaluate as E

    started = time.perf_counter()
    images = drawer.draw(
        [i.prompt for i in items],
        [i.seed for i in items],
        guidance=guidance,
        sampler=sampler,
        steps=STEPS,
    )
    seconds = time.perf_counter() - started
    return {
        "guidance": guidance,
        "sampler": sampler,
        "accuracy": E.accuracy(judge, images, [i.label for i in items]),
        "frechet": E.frechet_distance(judge.features(images), reference_features),
        "s_per_image": seconds / len(items),
    }


def demo_rows(
    *,
    per_digit: int,
    model: str,
    samplers: tuple[str, ...] | None = None,
    guidances: tuple[float, ...] = GUIDANCES,
) -> dict:
    """Accuracy and Fréchet distance per guidance (DPM++ 2M Karras) and per sampler (default guidance)."""
    from generative_service.rules import SAMPLERS
    from generative_service.training import evaluate as E
    from generative_service.training.drawing import DEFAULT_SAMPLER, EngineDrawer

    drawer = EngineDrawer(model)
    default_guidance = float(_bundle_info(drawer).get("default_guidance", 5.0))
    judge = E.train_judge()
    reference, _ = E.real_digits(10_000)
    reference_features = judge.features(reference)
    items = E.eval_set(per_digit)
    by_guidance = [
        _measure(drawer, judge, items, reference_features, guidance=g, sampler=DEFAULT_SAMPLER)
        for g in guidances
    ]
    by_sampler = [
        _measure(drawer, judge, items, reference_features, guidance=default_guidance, sampler=s)
        for s in (samplers or SAMPLERS)
    ]
    return {
        "model": str(model),
        "images": len(items),
        "reference": len(reference),
        "real_frechet": _real_split_frechet(judge, reference),
        "default_guidance": default_guidance,
        "judge_real_accuracy": judge.real_accuracy,
        "by_guidance": by_guidance,
        "by_sampler": by_sampler,
    }


def _bundle_info(drawer) -> dict:
    from generative_service.engine import paths

    return paths.bundle_info(drawer.settings)


def _real_split_frechet(judge, reference) -> float:
    """Fréchet distance between two halves of the real digits: the floor a perfect model would reach."""
    from generative_service.training import evaluate as E

    return E.frechet_distance(judge.features(reference[::2]), judge.features(reference[1::2]))


def demo_markdown(result: dict) -> str:
    def table(rows: list[dict], first: str) -> str:
        lines = [
            f"| {first} | prompted-digit accuracy | Fréchet distance | s / image |",
            "|---|---:|---:|---:|",
        ]
        for row in rows:
            lines.append(
                f"| {row[first]} | {100 * row['accuracy']:.1f} % | {row['frechet']:.2f} | {row['s_per_image']:.3f} |"
            )
        return "\n".join(lines)

    return f"""### (a) Digits model (`{result["model"]}`) through the Engine

{result["images"]} images per row (fixed seeds, the trained phrasings), {STEPS} steps, 64x64. Judge: RBF SVM on
held-out real digits ({100 * result["judge_real_accuracy"]:.1f} % on real digits it never saw). Fréchet distance on the
judge's 10 decision values against {result["reference"]} held-out real digits; two halves of the real digits score
{result["real_frechet"]:.2f} (the floor).

Guidance (DPM++ 2M Karras):

{table(result["by_guidance"], "guidance")}

Samplers (guidance {result["default_guidance"]:g}):

{table(result["by_sampler"], "sampler")}"""


# --- (a2) the demo model (shapes world) -------------------------------------------------------------------

SHAPES_GUIDANCES = (1.5, 3.0, 5.0, 7.5)


def shapes_rows(
    *, model: str, per_category: int, guidances: tuple[float, ...] = SHAPES_GUIDANCES
) -> dict:
    """Per guidance: accuracy by category, Fréchet distance (and its floor), images/s."""
    from generative_service.training import shapes as S
    from generative_service.training.drawing import DEFAULT_SAMPLER, EngineDrawer

    drawer = EngineDrawer(model)
    specs = S.eval_specs(per_category)
    prompts, seeds = [s.prompt for s in specs], [s.seed for s in specs]
    rows = []
    for g in guidances:
        started = time.perf_counter()
        images = drawer.draw(
            prompts, seeds, guidance=g, sampler=DEFAULT_SAMPLER, steps=STEPS, rgb=True
        )
        seconds = time.perf_counter() - started
        rows.append(
            {
                "guidance": g,
                "accuracy": S.accuracy_by_category(specs, images),
                **S.frechet_to_real(specs, images),
                "images_per_second": len(specs) / seconds,
            }
        )
    return {
        "model": str(model),
        "per_category": per_category,
        "default_guidance": float(_bundle_info(drawer).get("default_guidance", 3.0)),
        "judge_on_real": S.judge_real_accuracy(specs),
        "rows": rows,
    }


def shapes_markdown(result: dict) -> str:
    from generative_service.training import shapes as S

    names = (*S.CATEGORIES, "overall")
    head = "| guidance | " + " | ".join(n.replace("_", " ") for n in names)
    lines = [head + " | Fréchet (floor) | images/s |", "|---" * (len(names) + 3) + "|"]
    real = result["judge_on_real"]
    lines.append(
        "| judge on real renders | "
        + " | ".join(f"{100 * real[n]:.1f} %" for n in names)
        + " | - | - |"
    )
    for row in result["rows"]:
        marker = " (default)" if row["guidance"] == result["default_guidance"] else ""
        cells = " | ".join(f"{100 * row['accuracy'][n]:.1f} %" for n in names)
        lines.append(
            f"| {row['guidance']:g}{marker} | {cells} | {row['frechet']:.2f} ({row['frechet_real_floor']:.2f}) | {row['images_per_second']:.2f} |"
        )
    table = "\n".join(lines)
    return f"""### (a2) The demo model (shapes world) through the Engine

Bundle `{result["model"]}`. {result["per_category"]} prompts per category (fixed prompts and seeds, every trained
phrasing), {STEPS} steps DPM++ 2M Karras, 64x64, judged exactly (HSV colour segmentation, connected components,
contour fill ratio, centroids; GenEval rules: exactly the objects asked for). Fréchet distance on the judge's
16 scene features against real renders of the same prompts; in brackets two independent real render sets (the floor).

{table}"""


# --- (b) real SDXL ----------------------------------------------------------------------------------


def sdxl_rows(
    *,
    model: str,
    clip_model: str,
    reference_dir: str,
    fid_model: str | None = None,
    prompts_file: Path = PROMPTS,
    size: int | None = None,
    steps: int = 30,
    guidance: float = 7.5,
    seed: int = 0,
    device: str = "auto",
    cache_dir: Path | None = None,
) -> dict:
    """FID (generated vs reference images) and CLIP score of `model` on the fixed prompts."""
    import uuid

    from generative_service.engine import Engine, EngineJob
    from generative_service.schemas import GenerationRequest
    from generative_service.settings import Settings
    from generative_service.training import image_metrics as M

    prompts = M.read_prompts(prompts_file)
    overrides = {"cache_dir": cache_dir} if cache_dir else {}
    engine = Engine.from_settings(Settings(model=model, device=device, **overrides))
    side = size or engine.default_size
    jobs = [
        EngineJob(
            uuid.uuid4().hex,
            GenerationRequest(
                prompt=p,
                width=side,
                height=side,
                steps=steps,
                guidance_scale=guidance,
                seed=seed + i,
            ),
        )
        for i, p in enumerate(prompts)
    ]
    started = time.perf_counter()
    images = [image for output in engine.run(jobs) for image in output.images]
    seconds = time.perf_counter() - started
    scorer = M.ClipScorer(clip_model)
    features = M.FeatureModel(fid_model or clip_model)
    reference = M.load_images(reference_dir)
    return {
        "model": model,
        "prompts": len(prompts),
        "reference_images": len(reference),
        "size": side,
        "steps": steps,
        "guidance": guidance,
        "clip_score": float(scorer.scores(images, prompts).mean()),
        "fid": M.fid(features.features(images), features.features(reference)),
        "feature_model": str(fid_model or clip_model),
        "s_per_image": seconds / len(images),
    }


def sdxl_markdown(result: dict | None) -> str:
    if result is None:
        return """### (b) Real SDXL weights

Not run here: no SDXL weights on this machine. Run with `--sdxl-model DIR --clip-model DIR --reference-dir DIR`
(prompts: `benchmarks/prompts.txt`); the plumbing is tested with tiny models in `tests/training/test_quality_bench.py`."""
    return f"""### (a2) A shapes-world bundle (`--shapes-model DIR`, issue #19), through the Engine: GenEval-style
    accuracy per category (single, two objects, counting, colour attribution, position) read by
    the exact judge of `training/shapes.py` (its score on real renders of the same prompts
    beside), Fréchet distance on the judge's features vs real renders (with the real-vs-real
    floor) and images/s, for guidance 1.5, 3, 5, 7.5. `--per-category` prompts (default 100),
    fixed seeds, 20 steps DPM++ 2M Karras, 64x64.
(b) Real SDXL weights: `{result["model"]}`

{result["prompts"]} prompts from `benchmarks/prompts.txt`, {result["size"]}x{result["size"]}, {result["steps"]} steps, guidance
{result["guidance"]:g}, seeds 0..{result["prompts"] - 1}. Features for FID: `{result["feature_model"]}`; {result["reference_images"]} reference images.

| FID | CLIP score | s / image |
|---:|---:|---:|
| {result["fid"]:.2f} | {result["clip_score"]:.2f} | {result["s_per_image"]:.2f} |"""


# --- CLI ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--digits-model", help="a digits bundle directory (section a; not run without it)"
    )
    parser.add_argument("--per-digit", type=int, default=10, help="digits images per digit per row")
    parser.add_argument("--skip-demo", action="store_true", help="no shapes section (a2)")
    parser.add_argument(
        "--shapes-model", default="demo", help="the shapes bundle of section a2 (default: demo)"
    )
    parser.add_argument("--per-category", type=int, default=100, help="shapes prompts per category")
    parser.add_argument(
        "--sdxl-model", help="SDXL weights (bundle/pipeline directory or hub id in the local cache)"
    )
    parser.add_argument(
        "--clip-model",
        help="local transformers CLIPModel directory (CLIP score; FID features by default)",
    )
    parser.add_argument(
        "--fid-model", help="local transformers vision model directory for FID features"
    )
    parser.add_argument("--reference-dir", help="directory of real reference images for FID")
    parser.add_argument("--prompts", type=Path, default=PROMPTS)
    parser.add_argument("--size", type=int)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--no-report", action="store_true", help="print only; leave REPORT.md alone"
    )
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    parts = [
        f"## Image quality — `benchmarks/quality.py`\n\n{platform.machine()}, torch threads {torch.get_num_threads()}."
    ]
    if args.digits_model:
        parts.append(demo_markdown(demo_rows(per_digit=args.per_digit, model=args.digits_model)))
    if not args.skip_demo:
        # Its own report section: a shapes run leaves the digits and SDXL numbers alone.
        shapes = shapes_markdown(
            shapes_rows(model=args.shapes_model, per_category=args.per_category)
        )
        print(shapes)
        if not args.no_report:
            write_section("quality-shapes", shapes)
        if not (args.digits_model or args.sdxl_model):
            return 0
    sdxl = None
    if args.sdxl_model:
        if not (args.clip_model and args.reference_dir):
            parser.error("--sdxl-model needs --clip-model and --reference-dir")
        sdxl = sdxl_rows(
            model=args.sdxl_model,
            clip_model=args.clip_model,
            fid_model=args.fid_model,
            reference_dir=args.reference_dir,
            prompts_file=args.prompts,
            size=args.size,
            steps=args.steps,
            guidance=args.guidance,
            device=args.device,
        )
    parts.append(sdxl_markdown(sdxl))
    body = "\n\n".join(parts)
    print(body)
    if not args.no_report:
        write_section("quality", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
