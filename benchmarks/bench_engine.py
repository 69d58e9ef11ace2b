"""CPU benchmark of the engine on the tiny model (numbers, not a test).

Measures: seconds per image at batch 1, 2, 4 and 8 (one pipeline call per batch), LoRA switching
(set_adapters between loaded adapters, first load from disk) against reloading the base pipeline,
and the prompt-embedding cache (miss, local hit, Redis hit).

    .venv/bin/python benchmarks/bench_engine.py [--steps 10] [--repeats 3] [--no-report]

Writes the "engine-cpu" section of benchmarks/REPORT.md and benchmarks/figures/engine_batch.png
(latency per call and images/s against the batch size).
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import save_figure, write_section  # noqa: E402


def timed(fn, repeats: int) -> list[float]:
    """Wall seconds of `repeats` calls of fn()."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def bench_batches(engine, *, steps: int, repeats: int, sizes=(1, 2, 4, 8)) -> list[dict]:
    from generative_service.engine import EngineJob
    from generative_service.schemas import GenerationRequest

    rows = []
    for batch in sizes:
        jobs = [
            EngineJob(
                f"j{i}",
                GenerationRequest(
                    prompt=f"a photo of a cat {i}",
                    width=64,
                    height=64,
                    steps=steps,
                    seed=i,
                    guidance_scale=5.0,
                ),
            )
            for i in range(batch)
        ]
        engine.run(jobs)  # warm-up: first call of a shape builds oneDNN kernels
        times = timed(lambda jobs=jobs: engine.run(jobs), repeats)
        median = statistics.median(times)
        rows.append(
            {
                "batch": batch,
                "s_per_call": median,
                "s_per_image": median / batch,
                "images_per_s": batch / median,
            }
        )
    return rows


def bench_lora(engine, settings, *, repeats: int) -> dict:
    from diffusers import StableDiffusionXLPipeline

    from generative_service.engine.paths import pipeline_dir
    from generative_service.schemas import LoraSpec

    a, b = [LoraSpec(name="tiny-style-a")], [LoraSpec(name="tiny-style-b")]
    engine.loras.activate(a)
    engine.loras.activate(b)  # both loaded now
    switch = timed(lambda: (engine.loras.activate(a), engine.loras.activate(b)), repeats * 10)
    engine.loras.activate([])
    slot = engine.loras._adapters.pop("tiny-style-a")  # force a cold load of one adapter
    engine.pipe.delete_adapters(slot.slot)
    cold = timed(lambda: engine.loras.activate(a), 1)
    source = pipeline_dir(Path(settings.cache_dir) / "tiny")
    reload = timed(lambda: StableDiffusionXLPipeline.from_pretrained(source), repeats)
    engine.loras.activate([])
    return {
        "switch_ms": statistics.median(switch) / 2 * 1000,
        "cold_load_ms": cold[0] * 1000,
        "base_reload_ms": statistics.median(reload) * 1000,
    }


def bench_embeddings(engine, redis, prefix: str, *, repeats: int) -> dict:
    from generative_service.engine.prompts import PromptEncoder

    encoder = PromptEncoder(
        engine.pipe, fingerprint=engine.prompts.fingerprint, redis=redis, key_prefix=prefix
    )
    texts = [f"a drawing of a house number {secrets.token_hex(4)}" for _ in range(repeats * 5)]
    miss = timed(lambda it=iter(texts): encoder.encode(next(it)), len(texts))
    local = timed(lambda it=iter(texts): encoder.encode(next(it)), len(texts))
    result = {
        "miss_ms": statistics.median(miss) * 1000,
        "local_hit_ms": statistics.median(local) * 1000,
        "redis_hit_ms": None,
    }
    if redis is not None:
        encoder.clear_local()
        remote = timed(
            lambda it=iter(texts): (encoder.encode(next(it)), encoder.clear_local()), len(texts)
        )
        result["redis_hit_ms"] = statistics.median(remote) * 1000
        keys = list(redis.scan_iter(match=f"{prefix}:*"))
        if keys:
            redis.delete(*keys)
    return result


def connect_redis(url: str):
    from redis import Redis

    client = Redis.from_url(url, socket_connect_timeout=1)
    try:
        client.ping()
        return client
    except Exception:  # noqa: BLE001 - the Redis level is optional in this benchmark
        return None


def figure(batches: list[dict], *, steps: int) -> None:
    """Latency per pipeline call and images/s against the batch size, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [row["batch"] for row in batches]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot(sizes, [row["s_per_call"] * 1000 for row in batches], marker="o")
    left.set(xlabel="batch size (images per pipeline call)", ylabel="ms per call",
             title=f"engine latency (tiny model, 64 px, {steps} steps)")  # fmt: skip
    right.plot(sizes, [row["images_per_s"] for row in batches], marker="o", color="C1")
    right.set(xlabel="batch size (images per pipeline call)", ylabel="images / s",
              title="engine throughput")  # fmt: skip
    for ax in (left, right):
        ax.set_xticks(sizes)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    save_figure(fig, "engine_batch.png")


def render(batches: list[dict], lora: dict, emb: dict, *, steps: int, threads: int) -> str:
    base = batches[0]["images_per_s"]
    lines = [
        "## Engine on CPU (tiny model) — `benchmarks/bench_engine.py`",
        "",
        f"64x64, {steps} steps, DPM++ 2M Karras, CFG on; torch threads {threads}; {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} logical CPUs (shared with other work: expect noise; load average "
        f"{os.getloadavg()[0]:.1f} at the end). Medians.",
        "",
        "| batch | s / call | s / image | images / s | vs batch 1 |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in batches:
        lines.append(
            f"| {row['batch']} | {row['s_per_call']:.3f} | {row['s_per_image']:.3f} | {row['images_per_s']:.2f} | {row['images_per_s'] / base:.2f}x |"
        )
    lines += [
        "",
        "| LoRA | ms |",
        "|---|---:|",
        f"| switch between loaded adapters (set_adapters) | {lora['switch_ms']:.1f} |",
        f"| first load of an adapter from disk | {lora['cold_load_ms']:.1f} |",
        f"| reload of the base pipeline (what switching avoids) | {lora['base_reload_ms']:.1f} |",
        "",
        "| prompt embedding | ms |",
        "|---|---:|",
        f"| miss (encode + store) | {emb['miss_ms']:.2f} |",
        f"| hit, in-process | {emb['local_hit_ms']:.3f} |",
        f"| hit, Redis | {'n/a (no Redis)' if emb['redis_hit_ms'] is None else format(emb['redis_hit_ms'], '.2f')} |",
        "",
        "The tiny model's text encoders are toy-sized, so a miss is cheap here; with SDXL's two CLIP",
        "encoders a miss costs tens of ms on GPU, and the base reload takes seconds to minutes.",
        "",
        "![engine latency and images/s vs batch size](figures/engine_batch.png)",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batches", default="1,2,4,8", help="comma-separated batch sizes")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 is fastest on a busy shared CPU)"
    )
    parser.add_argument(
        "--no-report", action="store_true", help="print only; leave REPORT.md alone"
    )
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from generative_service.engine import Engine
    from generative_service.settings import Settings

    with tempfile.TemporaryDirectory() as lora_dir:
        settings = Settings(model="tiny", device="cpu", dtype="float32", lora_dir=Path(lora_dir))
        from generative_service.engine.tiny import ensure_tiny

        for path in (ensure_tiny(Path(settings.cache_dir)) / "loras").glob("*.safetensors"):
            (Path(lora_dir) / path.name).write_bytes(path.read_bytes())
        engine = Engine.from_settings(settings)
        sizes = tuple(int(n) for n in args.batches.split(","))
        batches = bench_batches(engine, steps=args.steps, repeats=args.repeats, sizes=sizes)
        lora = bench_lora(engine, settings, repeats=args.repeats)
        redis = connect_redis(settings.redis_url)
        emb = bench_embeddings(
            engine, redis, f"bench_engine_{secrets.token_hex(4)}", repeats=args.repeats
        )
    text = render(batches, lora, emb, steps=args.steps, threads=args.threads)
    print(text)
    figure(batches, steps=args.steps)
    if not args.no_report:
        write_section("engine-cpu", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
