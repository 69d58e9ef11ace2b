"""CPU benchmark of the engine backends (eager, onnxruntime, compile) side by side (numbers, not a test).

For each model (tiny, demo) and backend, one child process (so peak RSS is its own) measures:
first start (ONNX export / torch.compile warm-up included, on an empty cache), the start with
the cache filled (onnxruntime), seconds per image at batch 1, 2 and 4 (CFG on, one pipeline call
per batch), the first use of a new LoRA set, peak RSS, and the largest pixel difference of its
images from eager's (same seeds).

    nice -n 5 .venv/bin/python benchmarks/bench_backends.py [--models tiny,demo]
        [--backends eager,onnxruntime,compile:mark_dynamic,compile:dynamic,compile:pad]
        [--steps 20] [--repeats 3] [--no-report]

`compile:STRATEGY` is GENSVC_ENGINE_BACKEND=compile with GENSVC_COMPILE_BATCH=STRATEGY (how one
graph serves every batch size); each gets its own empty inductor cache, then a second start with
that cache filled.

Writes the "engine-backends" section of benchmarks/REPORT.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write_section  # noqa: E402

LORAS = {"tiny": "tiny-style-a", "demo": "bold"}
PROMPTS = {"tiny": "a photo of a cat", "demo": "a handwritten seven"}


# --- child: one model on one backend ---------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    from generative_service.engine import Engine, EngineJob
    from generative_service.schemas import GenerationRequest, LoraSpec
    from generative_service.settings import Settings

    backend, _, strategy = args.backend.partition(":")
    settings = Settings(
        model=args.model,
        cache_dir=args.cache_dir,
        engine_backend=backend,
        compile_batch=strategy or "mark_dynamic",
        lora_hotswap_rank=16 if backend == "compile" else 0,
        key_prefix=f"bench_backends_{secrets.token_hex(4)}",
        embedding_cache_ttl_s=0,
    )
    started = time.perf_counter()
    engine = Engine.from_settings(settings)
    result: dict = {"start_s": time.perf_counter() - started}
    if backend == "compile":
        result["compile_s"] = engine.backend.compile_seconds
    if args.start_only:
        print(json.dumps(result))
        return

    def jobs(batch: int, loras=()) -> list:
        return [
            EngineJob(
                f"j{i}",
                GenerationRequest(
                    prompt=PROMPTS[args.model],
                    width=engine.default_size,
                    height=engine.default_size,
                    steps=args.steps,
                    seed=100 + i,
                    guidance_scale=5.0,
                    loras=[LoraSpec(name=name, scale=1.0) for name in loras],
                ),
            )
            for i in range(batch)
        ]

    rows = []
    for batch in (1, 2, 4):
        group = jobs(batch)
        first = engine.run(group)  # warm-up: oneDNN kernels, ORT allocations
        times = []
        for _ in range(args.repeats):
            tick = time.perf_counter()
            engine.run(group)
            times.append(time.perf_counter() - tick)
        pixels = np.stack([np.asarray(out.images[0]) for out in first])
        np.save(Path(args.out) / f"{args.model}-{_file(args.backend)}-b{batch}.npy", pixels)
        rows.append({"batch": batch, "s_per_image": statistics.median(times) / batch})
    result["batches"] = rows
    # First use of a LoRA set this process has not seen (onnxruntime: export + load of its graph).
    lora = LORAS[args.model]
    tick = time.perf_counter()
    first = engine.run(jobs(1, [lora]))
    first_s = time.perf_counter() - tick
    tick = time.perf_counter()
    engine.run(jobs(1, [lora]))
    again_s = time.perf_counter() - tick
    np.save(
        Path(args.out) / f"{args.model}-{_file(args.backend)}-lora.npy",
        np.asarray(first[0].images[0]),
    )
    result["lora_first_use_s"] = first_s
    result["lora_extra_s"] = first_s - again_s
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result))


def _file(backend: str) -> str:
    return backend.replace(":", "-")


# --- parent: run the children, compare, report -------------------------------------------------


def run_child(args, *, model: str, backend: str, cache_dir: Path, out: Path, start_only=False):
    argv = [
        sys.executable,
        __file__,
        "--child",
        "--model",
        model,
        "--backend",
        backend,
        "--cache-dir",
        str(cache_dir),
        "--out",
        str(out),
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
        "--threads",
        str(args.threads),
    ] + (["--start-only"] if start_only else [])
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{model}/{backend} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def max_diff(out: Path, model: str, backend: str, name: str) -> int:
    import numpy as np

    ours = np.load(out / f"{model}-{_file(backend)}-{name}.npy").astype(np.int16)
    eager = np.load(out / f"{model}-eager-{name}.npy").astype(np.int16)
    return int(np.abs(ours - eager).max())


def render(results: dict, args) -> str:
    lines = [
        "## Engine backends on CPU (eager vs onnxruntime vs compile)",
        "",
        f"`benchmarks/bench_backends.py`: {args.steps} steps DPM++ 2M Karras, CFG (guidance 5), the",
        f"model's default size, {args.threads} thread(s), median of {args.repeats}; one child process per",
        "model and backend, run one after another in one run on a shared 2-core machine (absolute",
        "times move with its load; the ratios within one run are the comparison).",
        f"{platform.machine()}, Python {platform.python_version()}; load average (1 min) "
        f"{args.load_before:.1f} at the start, {args.load_after:.1f} at the end of the run.",
        "",
        "| model | backend | batch | s / image | vs eager | max pixel diff vs eager |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for model, per_backend in results.items():
        eager = {row["batch"]: row["s_per_image"] for row in per_backend["eager"]["batches"]}
        for backend, data in per_backend.items():
            for row in data["batches"]:
                ratio = eager[row["batch"]] / row["s_per_image"]
                diff = data["diffs"][f"b{row['batch']}"]
                lines.append(
                    f"| {model} | {backend} | {row['batch']} | {row['s_per_image']:.3f} "
                    f"| {ratio:.2f}x | {diff}/255 |"
                )
    lines += [
        "",
        "| model | backend | first start (s) | of which compiling (s) | start, cache filled (s) | first use of a new LoRA set (s extra) | LoRA image diff vs eager | peak RSS (MB) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model, per_backend in results.items():
        for backend, data in per_backend.items():
            cached = data.get("cached_start_s")
            compiling = data.get("compile_s")
            lines.append(
                f"| {model} | {backend} | {data['start_s']:.1f} "
                f"| {f'{compiling:.1f}' if compiling is not None else '-'} "
                f"| {f'{cached:.1f}' if cached is not None else '-'} "
                f"| {data['lora_extra_s']:.2f} | {data['diffs']['lora']}/255 "
                f"| {data['peak_rss_mb']:.0f} |"
            )
    lines += [
        "",
        "First start: loading the model plus, for onnxruntime, exporting the UNet, ControlNet(s) and",
        "VAE decoder to an empty cache, and for compile, compiling the UNet graph of the served size",
        "(empty inductor cache; 'of which compiling') and the one-step real-job check. 'Start, cache",
        "filled': a second process on the same cache. First use of a LoRA set: the extra seconds",
        "of the first call with it over the next one (onnxruntime: export of its fused UNet graph;",
        "compile: hot-swap into a slot; eager: loading the adapter).",
    ]
    return "\n".join(lines)


RUN_KEYS = ("steps", "repeats", "threads", "load_before", "load_after")


def report_from_json(args) -> None:
    """One section from several runs (e.g. one per model; ratios stay within each run)."""
    runs = [json.loads(Path(path).read_text()) for path in args.from_json]
    results = {model: data for run in runs for model, data in run["results"].items()}
    for key in RUN_KEYS:
        values = {run["run"][key] for run in runs}
        setattr(args, key, max(values) if key.startswith("load") else values.pop())
    body = render(results, args)
    print(body)
    if not args.no_report:
        write_section("engine-backends", body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny,demo")
    parser.add_argument("--backends", default="eager,onnxruntime,compile")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument(
        "--from-json",
        nargs="+",
        help="write the report from these --json files (one run per model) instead of running",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--backend", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.from_json:
        report_from_json(args)
        return
    args.load_before = os.getloadavg()[0]
    backends = ["eager", *(b for b in args.backends.split(",") if b and b != "eager")]
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as tmp:
        out = Path(tmp) / "images"
        out.mkdir()
        for model in args.models.split(","):
            results[model] = {}
            for backend in backends:
                cache_dir = Path(tmp) / f"cache-{model}-{_file(backend)}"  # empty: first start pays
                data = run_child(args, model=model, backend=backend, cache_dir=cache_dir, out=out)
                if backend.startswith(("onnxruntime", "compile")):
                    again = run_child(
                        args,
                        model=model,
                        backend=backend,
                        cache_dir=cache_dir,
                        out=out,
                        start_only=True,
                    )
                    data["cached_start_s"] = again["start_s"]
                names = ["b1", "b2", "b4", "lora"]
                data["diffs"] = {name: max_diff(out, model, backend, name) for name in names}
                results[model][backend] = data
                print(f"{model}/{backend}: {json.dumps(data)}", flush=True)
    args.load_after = os.getloadavg()[0]
    if args.json:
        run = {key: getattr(args, key) for key in RUN_KEYS}
        Path(args.json).write_text(json.dumps({"run": run, "results": results}, indent=1))
    body = render(results, args)
    print(body)
    if not args.no_report:
        write_section("engine-backends", body)


if __name__ == "__main__":
    main()
