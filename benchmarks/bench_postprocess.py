"""Post-processing benchmark: NSFW filter speed and false positives, upscaler time and memory.

    .venv/bin/python benchmarks/bench_postprocess.py [--sizes 256,512] [--no-report]

Measures, on this machine's CPU:
- open_nsfw (and nudenet, if installed) ms per image at batch 1 and 4 (1024 px inputs);
- the false-positive rate on the offline safe set (`generative_service.postprocess.safe_set`:
  scikit-image, scikit-learn, matplotlib and Debian wallpaper images, each flipped and cropped)
  at the configured `GENSVC_NSFW_THRESHOLD`;
- Real-ESRGAN x4 time and peak RSS for square inputs (one fresh subprocess per size, so the peak
  is that run's alone), with the configured tile size.
Writes its section of benchmarks/REPORT.md (between the `postprocess` markers).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from generative_service.postprocess.nsfw_models import NudeNet, OpenNsfw, onnx_providers  # noqa: E402
from generative_service.postprocess.safe_set import safe_set  # noqa: E402
from generative_service.postprocess.safety import decide  # noqa: E402
from generative_service.settings import Settings  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from _common import write_section  # noqa: E402

REPORT = ROOT / "benchmarks" / "REPORT.md"
SECTION = "postprocess"


def timed_ms(fn, repeats: int) -> float:
    """Median wall time of `fn()` in ms after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def nsfw_speed(classifier: OpenNsfw, detector: NudeNet | None) -> list[tuple[str, int, float]]:
    import skimage.data

    image = Image.fromarray(skimage.data.astronaut()).resize((1024, 1024))
    rows = []
    for batch in (1, 4):
        images = [image] * batch
        ms = timed_ms(lambda images=images: classifier.scores(images), 5)
        rows.append(("open_nsfw", batch, ms / batch))
        if detector is not None:
            ms = timed_ms(lambda images=images: detector.detect(images), 5)
            rows.append(("nudenet", batch, ms / batch))
    return rows


def false_positives(classifier: OpenNsfw, detector: NudeNet | None, threshold: float) -> dict:
    items = safe_set(augmented=True)
    scores: list[float] = []
    found: list = []
    for start in range(0, len(items), 16):
        chunk = [item.image for item in items[start : start + 16]]
        scores += classifier.scores(chunk)
        found += detector.detect(chunk) if detector is not None else [None] * len(chunk)
    groups: dict[str, set[str]] = {}
    for item in items:
        groups.setdefault(item.group, set()).add(item.source)
    result = {
        "threshold": threshold,
        "images": len(items),
        "sources": len({item.source for item in items}),
        "groups": {name: len(srcs) for name, srcs in sorted(groups.items())},
        "max_score": max(scores),
        "p99_score": float(np.percentile(scores, 99)),
        "top": sorted(
            ((s, f"{i.source} ({i.variant})") for s, i in zip(scores, items, strict=True)),
            reverse=True,
        )[:3],
        "fp_opennsfw": sum(decide(s, None, threshold=threshold).flagged for s in scores),
    }
    if detector is not None:
        result["fp_combined"] = sum(
            decide(s, d, threshold=threshold).flagged for s, d in zip(scores, found, strict=True)
        )
    return result


def current_rss_kib() -> int:
    """Resident memory now (Linux), in KiB; ru_maxrss only gives the peak so far."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def upscale_child(size: int, cache_dir: str, tile: int) -> None:
    """Run in a subprocess: load, upscale one size x size photo, print JSON timings and memory."""
    import skimage.data
    import torch

    from generative_service.postprocess.upscaler import Upscaler

    torch.set_num_threads(os.cpu_count() or 1)
    upscaler = Upscaler.from_settings(
        Settings(cache_dir=Path(cache_dir), upscale_tile=tile, device="cpu")
    )
    start = time.perf_counter()
    upscaler.load()
    load_s = time.perf_counter() - start
    base_kib = current_rss_kib()
    image = Image.fromarray(skimage.data.chelsea()).resize((size, size))
    start = time.perf_counter()
    out = upscaler.upscale(image, 4)
    seconds = time.perf_counter() - start
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "size": size,
                "out": list(out.size),
                "seconds": seconds,
                "load_s": load_s,
                "peak_mib": peak_kib / 1024,
                "delta_mib": (peak_kib - base_kib) / 1024,
            }
        )
    )


def upscale_runs(sizes: list[int], settings: Settings) -> list[dict]:
    import tempfile

    from generative_service.postprocess.convert import ensure_converted

    with tempfile.TemporaryDirectory(prefix="bench_pp_") as cache_dir:  # leave the real cache alone
        start = time.perf_counter()
        ensure_converted(Path(cache_dir))
        convert_s = time.perf_counter() - start
        return [_upscale_run(size, cache_dir, settings.upscale_tile, convert_s) for size in sizes]


def _upscale_run(size: int, cache_dir: str, tile: int, convert_s: float) -> dict:
    cmd = [sys.executable, __file__, "--child", str(size), cache_dir, str(tile)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["convert_s"] = convert_s
    print(
        f"upscale {size}² -> {row['out']}: {row['seconds']:.1f} s, peak RSS {row['peak_mib']:.0f} MiB "
        f"(+{row['delta_mib']:.0f} over the loaded model)",
        flush=True,
    )
    return row


def render(speed, fp, ups, settings: Settings, providers) -> str:
    cpu = f"{platform.machine()}, {os.cpu_count()} logical CPUs (shared with other work: expect noise)"
    lines = [
        "## Post-processing — `benchmarks/bench_postprocess.py`",
        "",
        f"CPU only ({cpu}); onnxruntime providers {providers}; medians of 5 after a warm-up; NSFW inputs 1024².",
        "",
        "| NSFW model | batch | ms / image |",
        "|---|---:|---:|",
        *[f"| {name} | {batch} | {ms:.1f} |" for name, batch, ms in speed],
        "",
        f"**False positives** at the configured threshold `nsfw_threshold = {fp['threshold']}`: "
        f"open_nsfw **{fp['fp_opennsfw']} / {fp['images']} = {100 * fp['fp_opennsfw'] / fp['images']:.2f} %**"
        + (
            f"; open_nsfw + nudenet rule {fp['fp_combined']} / {fp['images']} = "
            f"{100 * fp['fp_combined'] / fp['images']:.2f} %"
            if "fp_combined" in fp
            else "; nudenet not installed"
        )
        + ".",
        f"Safe set: {fp['images']} images = {fp['sources']} distinct source images x 7 (original, "
        f"h-flip, centre crop, 4 corner crops); sources per group: "
        + ", ".join(f"{k} {v}" for k, v in fp["groups"].items())
        + " (GNOME wallpapers come as light/dark pairs). "
        f"Highest open_nsfw score {fp['max_score']:.3f}, 99th percentile {fp['p99_score']:.3f}; top: "
        + "; ".join(f"{name} {score:.3f}" for score, name in fp["top"])
        + ".",
        "",
        f"Real-ESRGAN x4plus (converted ncnn weights, fp32 on CPU, tile {settings.upscale_tile}, 16 px context, "
        f"10 px reflect pre-pad); one fresh process per size; ncnn -> safetensors conversion "
        f"{ups[0]['convert_s'] if ups else float('nan'):.2f} s (first start only); model load "
        f"{ups[0]['load_s'] if ups else float('nan'):.2f} s.",
        "",
        "| input | output | seconds | peak RSS MiB | over loaded model MiB |",
        "|---|---|---:|---:|---:|",
        *[
            f"| {r['size']}² | {r['out'][0]}x{r['out'][1]} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {r['delta_mib']:.0f} |"
            for r in ups
        ],
        "",
        "Not measured here (no GPU lent to this session): 1024 -> 4096 in fp16 on CUDA.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--sizes", default="256,512", help="comma-separated square upscale input sizes"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print only; leave REPORT.md alone"
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        upscale_child(int(args.child[0]), args.child[1], int(args.child[2]))
        return
    settings = Settings(device="cpu")
    providers = onnx_providers(settings.device)
    classifier = OpenNsfw.load(providers)
    try:
        detector: NudeNet | None = NudeNet.load(providers)
    except Exception as exc:  # the optional extra is not installed
        print(f"nudenet skipped: {exc}")
        detector = None
    speed = nsfw_speed(classifier, detector)
    for name, batch, ms in speed:
        print(f"{name} batch {batch}: {ms:.1f} ms/image", flush=True)
    fp = false_positives(classifier, detector, settings.nsfw_threshold)
    print(json.dumps(fp, indent=1, default=str), flush=True)
    ups = upscale_runs([int(s) for s in args.sizes.split(",") if s], settings)
    text = render(speed, fp, ups, settings, [str(p) for p in providers])
    if not args.no_report:
        write_section(SECTION, text)
        print(f"wrote the {SECTION} section of {REPORT}")


if __name__ == "__main__":
    main()
