"""Full-size SDXL latency on one CUDA GPU, random weights (numbers, not a test).

Builds the real SDXL base architecture (UNet 2.6 B parameters, CLIP ViT-L + OpenCLIP bigG text
encoders, VAE) with random weights directly on the GPU in bfloat16 -- no download -- and runs it
through the service's own Engine: 1024x1024, 30 steps, DPM++ 2M Karras, CFG 7.5, at batch 1, 2
and 4; eager, then with `torch.compile` of the UNet; plus VAE decode time. Prints a table and
writes the "engine-gpu" section of benchmarks/REPORT.md. Budgeted to finish in < 8 min on an H200.

    python benchmarks/gpu_sdxl.py                  # on a CUDA machine
    python benchmarks/gpu_sdxl.py --smoke          # check the script on CPU with toy sizes

Random weights give noise images, but the compute (and so the latency) is that of real SDXL.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# SDXL base 1.0 component configs (published model configs), and a toy variant for --smoke.
FULL = {
    "unet": dict(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(5, 10, 20),
        transformer_layers_per_block=(1, 2, 10),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    ),
    "vae": dict(
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        sample_size=1024,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32,
        scaling_factor=0.13025,
        force_upcast=False,
    ),
    "text_encoder": dict(
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        projection_dim=768,
        hidden_act="quick_gelu",
        vocab_size=49408,
    ),
    "text_encoder_2": dict(
        hidden_size=1280,
        intermediate_size=5120,
        num_hidden_layers=32,
        num_attention_heads=20,
        projection_dim=1280,
        hidden_act="gelu",
        vocab_size=49408,
    ),
}
# Both smoke-test text encoders shrink the same way.
_SMOKE_TEXT = dict(
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    projection_dim=32,
    vocab_size=1000,
)
SMOKE = {
    "unet": dict(
        FULL["unet"],
        sample_size=8,
        block_out_channels=(32, 64, 64),
        attention_head_dim=(2, 4, 4),
        transformer_layers_per_block=(1, 1, 1),
        cross_attention_dim=64,
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32,
        norm_num_groups=8,
        layers_per_block=1,
    ),
    "vae": dict(
        FULL["vae"],
        block_out_channels=(16, 16, 32, 32),
        layers_per_block=1,
        norm_num_groups=8,
        sample_size=64,
    ),
    "text_encoder": dict(FULL["text_encoder"], **_SMOKE_TEXT),
    "text_encoder_2": dict(FULL["text_encoder_2"], **_SMOKE_TEXT),
}


def build_pipeline(configs: dict, *, device, dtype):
    """An SDXL pipeline with random weights, initialised on `device` (fast on a GPU)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from generative_service.engine.tokenizer import build_clip_tokenizer, clip_special_ids

    corpus = [
        "a photo of an astronaut riding a horse",
        "a watercolour painting of a lighthouse",
    ] * 4
    tokenizer = build_clip_tokenizer(corpus, vocab_size=600)
    torch.manual_seed(0)
    with torch.device(device):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        te1 = CLIPTextModel(
            CLIPTextConfig(**configs["text_encoder"], **clip_special_ids(tokenizer))
        )
        te2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**configs["text_encoder_2"], **clip_special_ids(tokenizer))
        )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=te1,
        text_encoder_2=te2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        add_watermarker=False,
    )
    pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def make_engine(pipe, *, device, dtype, cache_dir: Path):
    from generative_service.engine import Engine
    from generative_service.engine.hashing import FileHasher
    from generative_service.engine.loader import LoadedModels
    from generative_service.settings import Settings

    settings = Settings(
        model="sdxl-random-weights",
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        cache_dir=cache_dir,
        lora_dir=cache_dir / "loras",
        max_batch_images=4,
    )
    models = LoadedModels(
        pipe=pipe,
        control_pipes={},
        depth=None,
        device=device,
        dtype=dtype,
        attention="sdpa",
        sources={"model": "random weights (SDXL base configs)"},
    )
    return Engine(settings, models, hasher=FileHasher(None))


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_engine(engine, *, batch: int, size: int, steps: int, repeats: int) -> list[float]:
    from generative_service.engine import EngineJob
    from generative_service.schemas import GenerationRequest

    jobs = [
        EngineJob(
            f"j{i}",
            GenerationRequest(
                prompt=f"a photo of an astronaut riding a horse {i}",
                width=size,
                height=size,
                steps=steps,
                guidance_scale=7.5,
                sampler="dpmpp_2m_karras",
                seed=i,
            ),
        )
        for i in range(batch)
    ]
    times = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        engine.run(jobs)
        sync()
        times.append(time.perf_counter() - started)
    return times


def time_vae(pipe, *, batch: int, size: int, repeats: int) -> float:
    import torch

    latents = torch.randn(batch, 4, size // 8, size // 8, device=pipe.device, dtype=pipe.vae.dtype)
    with torch.inference_mode():
        pipe.vae.decode(latents / pipe.vae.config.scaling_factor)  # warm-up
        times = []
        for _ in range(repeats):
            sync()
            started = time.perf_counter()
            pipe.vae.decode(latents / pipe.vae.config.scaling_factor)
            sync()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="toy sizes on CPU: checks the script, numbers mean nothing",
    )
    parser.add_argument("--size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--compile-batches", default="1,4", help="batches measured compiled ('' = skip compile)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=450.0,
        help="skip configs that would end past this many seconds",
    )
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument(
        "--out", type=Path, default=None, help="also write the report section to this file"
    )
    args = parser.parse_args(argv)
    started = time.perf_counter()

    import torch

    if not args.smoke and not torch.cuda.is_available():
        print(
            "gpu_sdxl: no CUDA device here; this benchmark needs one (use --smoke to check the script on CPU)."
        )
        return 0
    warnings.filterwarnings(
        "ignore"
    )  # random weights: NaN casts in the image conversion are expected
    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else torch.bfloat16
    size = args.size or (64 if args.smoke else 1024)
    steps = args.steps or (2 if args.smoke else 30)
    batches = [int(b) for b in args.batches.split(",") if b]
    compile_batches = (
        [int(b) for b in args.compile_batches.split(",") if b] if not args.smoke else []
    )
    if not args.smoke:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.benchmark = True

    build_started = time.perf_counter()
    pipe = build_pipeline(SMOKE if args.smoke else FULL, device=device, dtype=dtype)
    pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.to(memory_format=torch.channels_last)
    build_s = time.perf_counter() - build_started
    unet_params = sum(p.numel() for p in pipe.unet.parameters()) / 1e9
    print(f"built SDXL ({unet_params:.2f} B UNet params) in {build_s:.1f} s on {device}, {dtype}")

    with tempfile.TemporaryDirectory() as tmp:
        engine = make_engine(pipe, device=device, dtype=dtype, cache_dir=Path(tmp))
        rows, skipped = [], []

        def measure(mode: str, batch: int, *, reserve_s: float) -> None:
            if time.perf_counter() - started + reserve_s > args.budget_s:
                skipped.append(f"{mode} b{batch} (time budget)")
                return
            warm = time.perf_counter()
            try:
                time_engine(
                    engine, batch=batch, size=size, steps=steps, repeats=1
                )  # warm-up / compile
            except Exception as exc:  # noqa: BLE001 - report a failed compile instead of losing the run
                skipped.append(
                    f"{mode} b{batch} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
                )
                return
            warm_s = time.perf_counter() - warm
            times = time_engine(engine, batch=batch, size=size, steps=steps, repeats=args.repeats)
            p50 = statistics.median(times)
            rows.append(
                {
                    "mode": mode,
                    "batch": batch,
                    "p50": p50,
                    "min": min(times),
                    "per_image": p50 / batch,
                    "warm_s": warm_s,
                    "mem_gb": torch.cuda.max_memory_allocated() / 2**30
                    if device.type == "cuda"
                    else 0.0,
                }
            )
            print(
                f"{mode:8s} batch {batch}: p50 {p50:.3f} s ({p50 / batch:.3f} s/image), first call {warm_s:.1f} s"
            )

        for batch in batches:
            measure("eager", batch, reserve_s=15.0 * batch)
        vae = {
            batch: time_vae(pipe, batch=batch, size=size, repeats=args.repeats) for batch in batches
        }
        print("VAE decode:", ", ".join(f"b{b} {t * 1000:.0f} ms" for b, t in vae.items()))
        if compile_batches:
            import torch._dynamo
            import torch._inductor.config as inductor

            inductor.conv_1x1_as_mm = True  # SDXL's many 1x1 convolutions run as matmuls
            torch._dynamo.config.automatic_dynamic_shapes = False  # static kernels per batch size
            pipe.unet.compile(fullgraph=True)
            for batch in compile_batches:
                measure("compiled", batch, reserve_s=120.0 + 10.0 * batch)
    total_s = time.perf_counter() - started
    text = render(
        rows,
        vae,
        skipped,
        device=device,
        dtype=dtype,
        size=size,
        steps=steps,
        build_s=build_s,
        total_s=total_s,
        smoke=args.smoke,
    )
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if not args.no_report and not args.smoke:
        from _common import write_section

        write_section("engine-gpu", text)
    return 0


def render(rows, vae, skipped, *, device, dtype, size, steps, build_s, total_s, smoke) -> str:
    import torch

    name = torch.cuda.get_device_name(0) if device.type == "cuda" else "CPU (smoke run: toy sizes)"
    lines = [
        "## Engine on GPU (full-size SDXL, random weights) — `benchmarks/gpu_sdxl.py`",
        "",
        f"{name}; {str(dtype).removeprefix('torch.')}; {size}x{size}, {steps} steps, DPM++ 2M Karras, CFG 7.5; "
        f"torch {torch.__version__}; SDPA attention; end-to-end `Engine.run` (prompt embeddings cached, VAE decode and "
        f"PIL conversion included). Build {build_s:.0f} s, whole run {total_s:.0f} s.",
        "",
        "| mode | batch | p50 s / call | min s | s / image | first call s | peak GiB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['batch']} | {r['p50']:.3f} | {r['min']:.3f} | {r['per_image']:.3f} | {r['warm_s']:.1f} | {r['mem_gb']:.1f} |"
        )
    lines += [
        "",
        "| VAE decode | " + " | ".join(f"batch {b}" for b in vae) + " |",
        "|---|" + "---:|" * len(vae),
        "| ms | " + " | ".join(f"{t * 1000:.0f}" for t in vae.values()) + " |",
    ]
    if skipped:
        lines += ["", f"Skipped to stay within the time budget: {', '.join(skipped)}."]
    if smoke:
        lines += ["", "Smoke run: checks the script only; the numbers say nothing about a GPU."]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
